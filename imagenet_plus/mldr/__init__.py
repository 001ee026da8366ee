"""Read apple/ml-dr's published reinforcements (ImageNet+, CIFAR-100, Food-101, Flowers-102) safely.

ml-dr publishes each reinforcement as a tar archive of one pickle per training sample
(``torch.save``; see ``docs/ml-dr-format.md`` for the format, with sources). This package
reads those archives without executing anything they contain, decodes their records into
checked numpy arrays and imports them into this package's store:

* :func:`open_archive` streams a ``.tar.gz``, ``.tar`` or extracted folder, reads its config
  and yields each sample's raw bytes (:class:`SampleMember`);
* :func:`parse_config` turns the config into a :class:`Layout` (which published variant);
* :func:`decode_sample` unpickles one sample with a restricted unpickler
  (:func:`load_torch_file`) and returns its :class:`SampleRecords`; it is a plain function of
  picklable arguments, for worker processes (:func:`decode_member` takes a :class:`SampleMember`);
* :func:`import_mldr` (the ``imagenet-plus import-ml-dr`` command, :mod:`imagenet_plus.mldr.cli`)
  converts a whole archive into a store over the user's copy of the dataset, replayed by the
  package's ``ml-dr`` policy flavour (:mod:`imagenet_plus.augment.mldr`).

Names are imported on first use, so the command line starts without numpy or torch.
"""

from __future__ import annotations

_LAZY = {
    "open_archive": "._archive", "MLDRArchive": "._archive", "SampleMember": "._archive",
    "parse_config": "._config", "Layout": "._config", "VARIANTS": "._config", "DATASETS": "._config",
    "MLDR_RA_OPS": "._config",
    "decode_sample": "._records", "decode_member": "._records", "decode_records": "._records",
    "SampleRecords": "._records",
    "load_torch_file": "._unpickle", "load_pickle": "._unpickle",
    "import_mldr": ".importer", "ImportResult": ".importer",
}


from .._lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)


__all__ = ["open_archive", "MLDRArchive", "SampleMember", "parse_config", "Layout", "decode_sample",
           "decode_member", "decode_records", "SampleRecords", "load_torch_file", "load_pickle", "VARIANTS",
           "DATASETS", "MLDR_RA_OPS", "import_mldr", "ImportResult"]
