"""Base editors by name."""

from odedit.editors.base import BaseEditor
from odedit.editors.ft_l import FTLEditor
from odedit.editors.lora import LoRAEditor

BASE_EDITORS: dict[str, type[BaseEditor]] = {
    FTLEditor.name: FTLEditor,
    LoRAEditor.name: LoRAEditor,
}
