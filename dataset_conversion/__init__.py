"""Dataset converters into nnU-Net raw format, one module per dataset (like nnU-Net's ``Dataset###_Name.py``).

Every converter turns a public dataset layout into an nnU-Net v2 raw dataset
(``$nnUNet_raw/DatasetXXX_Name``) plus the two extra ``dataset.json`` keys and the metadata file of
:mod:`nnunet_mgcl.conventions`. :data:`CONVERTERS` lists them: each module defines ``convert`` and
``add_arguments`` and becomes ``nnunet-mgcl convert NAME``.

The other modules hold what every converter needs, so that they all fail the same way on the same bad
input and never leave a half-written dataset behind:

* :mod:`.ids` -- the dataset folder name, case ids (one collision rule), name matching;
* :mod:`.paths` -- the raw folder, datasets already in it, the input's layout root;
* :mod:`.images` -- reading and validating NIfTI images, grids, masks and label maps;
* :mod:`.tables` -- clinical tables and the numbers in their cells;
* :mod:`.summary` -- the case groups, :class:`~.summary.ConversionSummary`, the per-case loop;
* :mod:`.writer` -- :class:`~.writer.DatasetWriter`, ``dataset.json`` and metadata;
* :mod:`.cli` -- the options every ``nnunet-mgcl convert`` sub-command shares.

A converter typically reads::

    with DatasetWriter(dataset_id, "MyData", raw_dir=raw_dir, overwrite=overwrite, dry_run=dry_run,
                       channel_names=["T1", "FLAIR"]) as writer:
        cases = discover(...)                       # dataset-level problems raise InputError
        for_each_case(cases, lambda c: convert_one(writer, c), key=lambda c: c.source_id,
                      summary=writer.summary, skip_bad=skip_bad, progress=progress,
                      cleanup=lambda c: writer.discard_case(c.case_id))
        writer.write_dataset_json(labels={"background": 0, "lesion": 1},
                                  case_label_name="tss", case_label_classes={"0": "...", "1": "..."})
    return writer.summary.as_dict()
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: ``nnunet-mgcl convert NAME`` -> the module that converts that dataset. Explicit, so that a shared
#: helper module is never taken for a converter: add a new converter here.
CONVERTERS: dict[str, str] = {
    "csvd": "nnunet_mgcl.dataset_conversion.csvd",
    "isles22": "nnunet_mgcl.dataset_conversion.isles22",
    "isles24": "nnunet_mgcl.dataset_conversion.isles24",
    "mmis": "nnunet_mgcl.dataset_conversion.mmis",
    "mmwhs": "nnunet_mgcl.dataset_conversion.mmwhs",
    "valdo": "nnunet_mgcl.dataset_conversion.valdo",
    "wmh17": "nnunet_mgcl.dataset_conversion.wmh17",
}


def load_converter(name: str) -> ModuleType:
    """The converter module of ``name`` (a key of :data:`CONVERTERS`); KeyError for an unknown name."""
    return importlib.import_module(CONVERTERS[name])
