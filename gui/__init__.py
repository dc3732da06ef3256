"""The PySide6 window: a thin layer that binds widgets to qlora_studio.core."""
