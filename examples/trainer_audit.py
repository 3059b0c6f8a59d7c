"""Audit what a ``transformers.Trainer`` run has memorized, through the Trainer's own logging.

Plain SFT (the Trainer's default loss) on three phonebook entries, with memlaw's
``MemoryAuditCallback``: every 4 steps it measures the memory set with the current weights and
logs the numbers like the loss, so TensorBoard or W&B (``report_to=...``) chart them too.
Watch ``above``: the share of supervised tokens already above p = 0.5, which SFT keeps
spending its gradient on.

    python examples/trainer_audit.py
"""

import tempfile

from transformers import PrinterCallback, Trainer, TrainingArguments

from memlaw.adapters import LoraSpec, attach_lora
from memlaw.data import encode_items, generate_phonebook
from memlaw.integrations import MemoryAuditCallback, MemoryCollator, memory_dataset
from memlaw.models import load_model

model, tokenizer = load_model("tiny")
items = encode_items(generate_phonebook(3, seed=1), tokenizer)
model = attach_lora(model, LoraSpec(rank=8, layers=(0, 1, 2, 3), modules="all"))

args = TrainingArguments(
    output_dir=tempfile.mkdtemp(),
    max_steps=20,
    per_device_train_batch_size=len(items),
    learning_rate=2e-2,
    lr_scheduler_type="constant",
    logging_steps=4,
    report_to="none",  # e.g. "tensorboard" or "wandb": the audit reaches them too
    save_strategy="no",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=memory_dataset(items),
    data_collator=MemoryCollator(tokenizer.pad_token_id),
)
trainer.remove_callback(PrinterCallback)  # this script prints its own table
audit = MemoryAuditCallback(items, every=4).attach(trainer)  # <- the one line
trainer.train()

for entry in trainer.state.log_history:
    if "memlaw/above_share" in entry:
        print(
            f"audit step {entry['step']:2d}: above={entry['memlaw/above_share']:.2f} "
            f"certified={entry['memlaw/certified_share']:.2f} "
            f"stubborn={entry['memlaw/stubborn_tokens']:.0f} "
            f"loss={entry['memlaw/target_loss']:.3f}"
        )
print(
    f"at the end, {audit.history[-1]['memlaw/above_share']:.0%} of the supervised tokens were "
    "already above p = 0.5: an SFT step still spends its budget on them, MemFT would not"
)
