"""Fine-tuning a pretrained video or audio backbone end to end on a labelled shard set
(docs/method.md §Fine-tuning). `finetune(...)` runs one in this process; `xkd finetune` is the command."""
from xkd.finetune.run import FinetuneRefused, finetune

__all__ = ["FinetuneRefused", "finetune"]
