"""The source layouts `nnunet-peft convert` understands, keyed by their FORMAT name."""
from __future__ import annotations

from nnunet_peft.dataset_conversion.formats.base import Layout
from nnunet_peft.dataset_conversion.formats.bhsd import Bhsd
from nnunet_peft.dataset_conversion.formats.brats2021 import Brats2021
from nnunet_peft.dataset_conversion.formats.ct_ich import CtIch
from nnunet_peft.dataset_conversion.formats.harp import Harp
from nnunet_peft.dataset_conversion.formats.instance2022 import Instance2022
from nnunet_peft.dataset_conversion.formats.lorapt import LoraPt
from nnunet_peft.dataset_conversion.formats.lpba40 import Lpba40
from nnunet_peft.dataset_conversion.formats.msd import Msd
from nnunet_peft.dataset_conversion.formats.paired import Paired

FORMATS: dict[str, type[Layout]] = {layout.name: layout for layout in (
    Paired, CtIch, Instance2022, Bhsd, Msd, Harp, Lpba40, LoraPt, Brats2021)}

__all__ = ["FORMATS", "Layout"]
