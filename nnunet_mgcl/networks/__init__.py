"""Networks: the plans' U-Net wrapped (not rewritten), plus projection and classification heads."""
