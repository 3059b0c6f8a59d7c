"""MemFT in your own ``transformers.Trainer``: one line, ``compute_loss_func=memft_loss_func()``.

Memorizes three phonebook entries into a LoRA adapter on memlaw's tiny built-in model (built in
code, nothing to download). MemFT-OT trains only the target tokens whose probability is still
below 0.5; once every token is above it, the steps make no update at all.

    python examples/trainer_memft.py
"""

import tempfile

from transformers import PrinterCallback, Trainer, TrainingArguments

from memlaw.adapters import LoraSpec, attach_lora
from memlaw.data import encode_items, generate_phonebook
from memlaw.integrations import MemoryCollator, memft_loss_func, memory_dataset, memory_metrics
from memlaw.models import load_model

model, tokenizer = load_model("tiny")
items = encode_items(generate_phonebook(3, seed=1), tokenizer)  # "Name:" -> 10 digits
model = attach_lora(model, LoraSpec(rank=8, layers=(0, 1, 2, 3), modules="all"))

args = TrainingArguments(
    output_dir=tempfile.mkdtemp(),
    max_steps=20,
    per_device_train_batch_size=len(items),
    learning_rate=2e-2,
    lr_scheduler_type="constant",
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=memory_dataset(items),  # input_ids, answer-only labels
    data_collator=MemoryCollator(tokenizer.pad_token_id),
    compute_loss_func=memft_loss_func(tau=0.5),  # <- the one line
)
trainer.remove_callback(PrinterCallback)  # this script prints its own table
trainer.train()

print("step  MemFT loss  grad norm")
logs = [entry for entry in trainer.state.log_history if "loss" in entry]
for entry in logs:
    print(f"{entry['step']:4d}  {entry['loss']:10.4f}  {entry['grad_norm']:9.4f}")
metrics = memory_metrics(trainer.model, items)
certified = round(metrics["memlaw/certified_share"] * len(items))
print(f"certified: {certified}/{len(items)} items (every target token p > 0.5)")
print(f"steps without an update: {sum(entry['loss'] == 0.0 for entry in logs)}")
