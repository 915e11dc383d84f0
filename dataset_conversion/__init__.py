"""Dataset converters into nnU-Net raw format, one module per dataset."""
