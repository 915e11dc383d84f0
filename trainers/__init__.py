"""nnUNetTrainer subclasses, one file per method.

Every class listed in ``__all__`` is found by ``nnUNetv2_train -tr NAME`` once ``nnUNet_extTrainer``
names our shim folder (``eval "$(nnunet-mgcl env)"``).
"""
from nnunet_mgcl.trainers.finetune import nnUNetTrainerFinetune
from nnunet_mgcl.trainers.glcl_pretrain import nnUNetTrainerGLCLPretrain
from nnunet_mgcl.trainers.mgcl import nnUNetTrainerMGCL, nnUNetTrainerMGCL_noMRFF
from nnunet_mgcl.trainers.mgcl_pretrain import (
    nnUNetTrainerMGCLPretrain,
    nnUNetTrainerMGCLPretrain_coarse,
    nnUNetTrainerMGCLPretrain_fine,
)
from nnunet_mgcl.trainers.mmgl import nnUNetTrainerMMGL
from nnunet_mgcl.trainers.mmgl_pretrain import nnUNetTrainerMMGLPretrain
from nnunet_mgcl.trainers.plans_budget import nnUNetTrainerPlansBudget
from nnunet_mgcl.trainers.pseudo_label_pretrain import nnUNetTrainerPseudoLabelPretrain
from nnunet_mgcl.trainers.simclr_pretrain import nnUNetTrainerSimCLRPretrain

__all__ = [
    "nnUNetTrainerPlansBudget",
    "nnUNetTrainerMGCLPretrain",
    "nnUNetTrainerMGCLPretrain_coarse",
    "nnUNetTrainerMGCLPretrain_fine",
    "nnUNetTrainerMMGLPretrain",
    "nnUNetTrainerSimCLRPretrain",
    "nnUNetTrainerGLCLPretrain",
    "nnUNetTrainerPseudoLabelPretrain",
    "nnUNetTrainerMGCL",
    "nnUNetTrainerMGCL_noMRFF",
    "nnUNetTrainerMMGL",
    "nnUNetTrainerFinetune",
]
