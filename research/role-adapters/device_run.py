"""GPU run for the role adapters of SmolLM2-135M-Instruct (QA writer, judge): two recipes per role, each
trained with `helpers.roles.build` (the course's `training.train`) and checked on the **val** split's derived
examples with greedy HF generation. The human judge labels are not touched here.

Usage on the device (see run.sh):  python research/role-adapters/device_run.py OUT_DIR EXAMPLES_DIR
Writes OUT_DIR/<role>-<i>.tar (adapter + manifest) and OUT_DIR/eval.json (raw val outputs, judge accuracy).
"""

import json
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from helpers import chatformat, judgeprompt, labels, models, roles  # noqa: E402
from helpers.profiles import load_profile  # noqa: E402

RECIPES = {
    "writer": [roles.RoleRecipe(max_steps=40, learning_rate=1e-3), roles.RoleRecipe(max_steps=80, learning_rate=5e-4)],
    "judge": [roles.RoleRecipe(max_steps=100, learning_rate=1e-3), roles.RoleRecipe(max_steps=200, learning_rate=5e-4)],
}


def generate(base_dir: str, adapter_dir: Path | None, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = labels.load_tokenizer(base_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16).cuda()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    texts = [chatformat.render(tok, m) for m in prompts]
    outs = []
    for i in range(0, len(texts), 32):
        batch = tok(texts[i:i + 32], return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
        with torch.no_grad():
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        outs += tok.batch_decode(gen[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return outs


def main() -> None:
    out, examples_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile("gpu-smoke")
    base = models.resolve(profile, "generator_model")
    report = {}
    for role, recipes in RECIPES.items():
        val = [json.loads(line) for line in open(examples_dir / f"{role}-val.jsonl", encoding="utf-8")]
        t0 = time.time()
        bare = generate(base, None, [r["messages"] for r in val], 160 if role == "writer" else 100)
        report[f"{role}-bare"] = {"outputs": bare, "seconds": round(time.time() - t0, 1)}
        for i, recipe in enumerate(recipes):
            t0 = time.time()
            adapter = roles.build(role, profile, f"/tmp/roles/{role}-{i}", recipe, progress=False,
                                  examples_dir=examples_dir)
            manifest = roles.verify(role, adapter)
            outputs = generate(base, adapter, [r["messages"] for r in val], 160 if role == "writer" else 100)
            entry = {"recipe": manifest["recipe"], "loss_last": manifest["loss_last"],
                     "eval_loss_last": manifest["eval_loss_last"], "train_seconds": manifest["seconds"],
                     "seconds": round(time.time() - t0, 1), "outputs": outputs}
            if role == "judge":
                parsed = [judgeprompt.parse(o)[0] for o in outputs]
                entry["val_grade_accuracy"] = sum(p is not None and p["grade"] == r["grade"]
                                                  for p, r in zip(parsed, val)) / len(val)
                entry["val_unparsed"] = sum(p is None for p in parsed)
            report[f"{role}-{i}"] = entry
            with tarfile.open(out / f"{role}-{i}.tar", "w") as tar:
                tar.add(adapter, arcname=f"{role}-{i}")
            print(role, i, {k: v for k, v in entry.items() if k != "outputs"}, flush=True)
    (out / "eval.json").write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
