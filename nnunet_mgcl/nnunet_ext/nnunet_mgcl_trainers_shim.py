"""Shim for nnU-Net's ``nnUNet_extTrainer`` lookup: re-exports the installed nnunet-mgcl trainers.

Keep this folder free of anything else: nnU-Net imports every module in it as a top-level module.
"""
from nnunet_mgcl.trainers import *  # noqa: F401,F403
