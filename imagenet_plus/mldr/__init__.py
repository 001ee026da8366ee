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
* :func:`import_mldr` (the ``imagenet-plus import-ml-dr`` command) converts a whole archive into a
  store over the user's copy of the dataset, replayed by the package's ``ml-dr`` policy flavour.
"""

from __future__ import annotations

from ._archive import MLDRArchive, SampleMember, open_archive
from ._config import DATASETS, MLDR_RA_OPS, VARIANTS, Layout, parse_config
from ._records import SampleRecords, decode_member, decode_records, decode_sample
from ._unpickle import load_pickle, load_torch_file

__all__ = ["open_archive", "MLDRArchive", "SampleMember", "parse_config", "Layout", "decode_sample",
           "decode_member", "decode_records", "SampleRecords", "load_torch_file", "load_pickle", "VARIANTS",
           "DATASETS", "MLDR_RA_OPS"]
