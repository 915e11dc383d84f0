"""Data: two-view loading for contrastive pretraining, lesion candidates, the unlabeled pool."""
