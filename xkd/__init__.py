"""XKD: cross-modal knowledge distillation with domain alignment (Sarkar & Etemad, AAAI 2024)."""

__version__ = "0.1.0"
