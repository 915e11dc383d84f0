"""nnunet-mgcl: an nnU-Net v2 plugin for label-efficient stroke imaging.

The package adds dataset converters, a synthetic (phantom) stroke cohort, contrastive pretraining
trainers and a multi-task fine-tuning trainer to nnU-Net v2 (pinned: 2.8.1). Users keep running
``nnUNetv2_plan_and_preprocess`` / ``nnUNetv2_train -tr <ours>`` / ``nnUNetv2_predict``; see README.md.
"""
__version__ = "0.1.0"
