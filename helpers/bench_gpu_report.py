"""docs/benchmarks.md from the GPU measurements of ``bench_gpu`` (docs/benchmarks-gpu.json): tables, verdicts
against the course's targets, and a bar chart. Rendering only; nothing here touches a GPU."""

from __future__ import annotations

from pathlib import Path

from . import io, paths


GENERATION_MIN_RATIO = 0.9        # the generation step vs raw vLLM on the same prompts and lengths
QLORA_MAX_GB = 9.0                 # peak memory of QLoRA 7B at 4 x 1024
QLORA_MIN_TOKENS_PER_S = 3258      # the raw QLoRA loop (transformers + peft, no Trainer) on an H100
DECODE_MIN_BANDWIDTH_SHARE = 0.85  # batch-1 decode vs the card's memory bandwidth limit
# Peak memory bandwidth from the vendors' data sheets, TB/s (matched against torch's device name).
BANDWIDTH_TB_S = {"H200": 4.8, "H100 80GB HBM3": 3.35, "A100-SXM4-80GB": 2.039, "L4": 0.3, "T4": 0.32}


def decode_bytes_per_token(shape: dict, bytes_per_param: int = 2) -> int:
    """Bytes one batch-1 decode step must read: every weight matrix once (the input embedding only one row)."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * shape.get("head_dim", h // shape["num_attention_heads"])
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter + 2 * h      # q, o; k, v; gate, up, down; two norms
    return (layers * per_layer + shape["vocab_size"] * h + h + h) * bytes_per_param   # + lm_head, final norm, one row


def bandwidth_share(tokens_per_s: float, gpu: str, shape: dict) -> dict | None:
    """Batch-1 decode as a share of the card's bandwidth limit (None for a card not in BANDWIDTH_TB_S)."""
    tb_s = next((v for k, v in BANDWIDTH_TB_S.items() if k in gpu), None)
    if tb_s is None:
        return None
    per_token = decode_bytes_per_token(shape)
    limit = tb_s * 1e12 / per_token
    return {"bandwidth_tb_s": tb_s, "bytes_per_token": per_token, "limit_tokens_per_s": round(limit, 1),
            "share": round(tokens_per_s / limit, 3)}


def decode_section(results: dict) -> list[str]:
    from .bench_gpu import MISTRAL_7B

    rec = (results.get("graphs") or {}).get("batch_1")
    gpu = results.get("environment", {}).get("gpu", "")
    share = rec and bandwidth_share(rec["tokens_per_s"], gpu, MISTRAL_7B)
    if not share:
        return []
    ok = share["share"] >= DECODE_MIN_BANDWIDTH_SHARE
    return ["## Batch 1 gegen die Speicherbandbreite", "",
            (f"Ein Decode-Schritt mit Batch 1 liest jede Gewichtsmatrix einmal: "
             f"{share['bytes_per_token'] / 1e9:.2f} GB in bfloat16. Bei {share['bandwidth_tb_s']} TB/s "
             f"({gpu}, Datenblatt) sind höchstens {share['limit_tokens_per_s']} Tokens/s möglich; gemessen "
             f"(CUDA Graphs) {rec['tokens_per_s']} Tokens/s = {share['share']:.0%} der Grenze (Ziel ≥ "
             f"{DECODE_MIN_BANDWIDTH_SHARE:.0%}: {'erreicht' if ok else 'verfehlt'}). Die Messung enthält das "
             f"Prefill der {results.get('prompt_tokens')} Prompt-Tokens und den Start der Anfrage, der Anteil "
             "des reinen Decodings liegt also etwas höher.")
            + measured_bandwidth_note(results, rec["tokens_per_s"], share), ""]


def measured_bandwidth_note(results: dict, tokens_per_s: float, share: dict) -> str:
    """The same decode against what the card's memory delivered in this run (``membw``: a device copy)."""
    bw = results.get("membw")
    if not bw:
        return ""
    limit = bw["tb_s"] * 1e12 / share["bytes_per_token"]
    return (f" Eine Kopie im Grafikspeicher erreichte in diesem Lauf {bw['tb_s']} TB/s "
            f"({bw['tb_s'] / share['bandwidth_tb_s']:.0%} des Datenblatts); gegen diese praktische Grenze "
            f"({limit:.1f} Tokens/s) liegt der Batch-1-Decode bei {tokens_per_s / limit:.0%}.")


def generation_section(results: dict) -> list[str]:
    """The generation step's verdict, what its gap to raw vLLM consists of, and the variants tried."""
    step, raw = results["generation_step"], results["generation_raw"]
    ratio = results["generation_ratio"]
    lines = ["## Einordnung Generierung", "",
             (f"Der Generierungs-Schritt (`generation.generate_unit`: Prompts bauen, JSON-Schema-Decoding mit "
              f"xgrammar, jede Ausgabe mit pydantic prüfen) erreicht {ratio:.0%} des rohen vLLM-Durchsatzes "
              f"auf denselben {step['requests']} Prompts mit denselben Output-Längen je Anfrage "
              f"(Ziel ≥ {GENERATION_MIN_RATIO:.0%}: {'erreicht' if ratio >= GENERATION_MIN_RATIO else 'verfehlt'}). "
              + (f"Das Modell hat die 7B-Form und den echten Tokenizer von Mistral-7B-v0.1 ({step.get('vocab_size')} "
                 "Tokens, mit dem `[INST]`-Template des Kurses), dazu echte Chunk-Prompts."
                 if step.get("vocab") == "mistral" else
                 "Das Modell hat hier die 7B-Form, aber das Vokabular von Kurs-Mini (die Grammatik braucht Modell und "
                 "Tokenizer mit gleichem Vokabular) und echte Chunk-Prompts: Seine Tokens/s sind deshalb nicht mit "
                 "den Zeilen zu vLLM offline oben vergleichbar, nur untereinander.")),
             ""]
    uniform = results.get("generation_raw_uniform")
    if uniform and step.get("min_tokens") != step.get("max_tokens"):
        tail = uniform["tokens_per_s"] / raw["tokens_per_s"]
        lines.append(f"- Ungleiche Antwortlängen im Batch: Rohes vLLM mit der mittleren Länge für alle Anfragen ist "
                     f"{tail:.2f}x so schnell wie mit den echten Längen ({step['min_tokens']}–{step['max_tokens']} "
                     "Tokens) – so viel kostet der Rest eines Batches, der auf die längste Antwort wartet.")
    seq = results.get("generation_sequential")
    if seq:
        lines.append(f"- Derselbe Schritt als Schleife über einzelne Anfragen: {seq['tokens_per_s']} Tokens/s, "
                     f"der Batch ist {step['tokens_per_s'] / seq['tokens_per_s']:.0f}x schneller.")
    if "build_seconds" in step:
        lines.append(f"- Prompts und Sampling-Parameter bauen (Python, ohne GPU): {step['build_seconds']} s von "
                     f"{step['seconds']} s des Schritts.")
    lengths = (str(step.get("min_tokens")) if step.get("min_tokens") == step.get("max_tokens")
               else f"{step.get('min_tokens')}–{step.get('max_tokens')}")
    lines.append(f"- Ausgaben: {step.get('valid_records')} gültig, {step.get('rejects')} verworfen, {lengths} Tokens "
                 "je Anfrage. Mit Zufallsgewichten schließt das Modell einen String nur, wenn die Grammatik es "
                 "erzwingt (`maxLength`); ohne läuft jede Anfrage bis `max_tokens` und wird als `truncated` verworfen. "
                 "Fair bleibt der Vergleich trotzdem: Rohes vLLM läuft mit denselben Längen je Anfrage.")
    lines.append("")
    variants = results.get("generation_variants") or []
    if variants:
        where = results.get("generation_variants_gpu", "gleiche GPU")
        lines += [f"Was wir am Schritt ausprobiert haben (je ein eigener Lauf, {where}, gleiche Prompts; "
                  "„Verhältnis“ ist Schritt / rohes vLLM mit gleichen Längen auf derselben Engine):", "",
                  "| Variante | Schritt Tokens/s | Roh Tokens/s | Verhältnis | Tokens je Anfrage |",
                  "|---|---|---|---|---|"]
        for v in variants:
            lines.append(f"| {v['label']} | {v['step']} | {v['raw']} | {v['ratio']:.0%} | {v['tokens']} |")
        lines.append("")
        lines += [("Was das heißt: Der größte Posten war `maxLength` im Schema. Damit muss die Grammatik Zeichen über "
                   "Tokens hinweg zählen, und die Token-Maske, die vLLM in jedem Decode-Schritt für jede Sequenz "
                   "berechnet, wird ein Vielfaches teurer. Die Profile mit echten Modellen (`t4`, `l4`, `h100`) "
                   "begrenzen die Länge deshalb über `qa_max_tokens` und die QC statt in der Grammatik "
                   "(`dataset.length_in_schema: false`); nur die Kurs-Mini-Profile behalten `maxLength`, weil das "
                   "winzige Modell sonst selten einen String schließt. Der Rest der Lücke ist der Structured-Output-"
                   "Pfad von vLLM selbst (Maske und Token-Annahme je Sequenz und Schritt); `guidance` statt `xgrammar` "
                   "und eine Engine in eigenem Prozess waren hier langsamer. Den vollen Rohdurchsatz gäbe es nur ohne Schema "
                   "(nachträglich validieren, jede ungültige Ausgabe wird Reject) – das setzt der Kurs nicht um."), ""]
    return lines


JUDGE_KEYS = ("judge_l4", "judge_t4", "judge_70b")


def judge_section(results: dict) -> list[str]:
    """Judgments/s and memory of the judge engines (``bench-gpu judge-l4 judge-t4 judge-70b``)."""
    judged = [(k, results[k]) for k in JUDGE_KEYS if isinstance(results.get(k), dict) and "batch" in results[k]]
    if not judged:
        return []
    first = judged[0][1]
    lines = ["## Judge-Engines", "",
             "Die Judge-Engine jedes Profils mit den Einstellungen des Kurses (`inference.engine_kwargs`), Modell in "
             f"echter Form mit Zufallsgewichten; Prompts à {first.get('prompt_tokens')} Tokens (Rubrik, Kontext, "
             f"Frage, Antwort), {first.get('output_tokens')} Output-Tokens je Urteil (Begründung + Urteil als JSON, "
             "EOS ignoriert). Auf einer größeren GPU bekommt ein Ein-GPU-Profil den Speicher, den seine Karte ließe.",
             "",
             "| Profil | Judge-Modell | Urteile/s | Batch 1 (Tokens/s) | GPU-Speicher belegt (GB je GPU) | Karte (GB) | Engine-Start (s) |",
             "|---|---|---|---|---|---|---|"]
    for _, r in judged:
        lines.append(f"| {r.get('profile', '70b')} | {r.get('judge_model', '')} | {r['judgments_per_s']} | "
                     f"{r['single']['tokens_per_s']} | {', '.join(str(u) for u in r.get('memory_used_gb_per_gpu', []))} | "
                     f"{r.get('card_gb') or '–'} | {r['startup_s']} |")
    return lines + [""]


def write_markdown(results: dict, path: str | Path | None = None, plot: bool = True) -> Path:
    """Render the measurements as docs/benchmarks.md (+ a bar chart next to it)."""
    path = Path(path or paths.ROOT / "docs" / "benchmarks.md")
    env = results.get("environment", {})
    measured = results.get("measured_at") or {}
    lines = ["# Benchmarks (GPU, 7B-Form mit Zufallsgewichten)", "",
             "Gemessen mit `make bench-gpu` (jeder Teil in einem eigenen Prozess auf derselben GPU); Modell: "
             "Mistral-7B-Architektur, Gewichte zufällig "
             f"(`load_format=\"dummy\"`), {results.get('prompts')} Prompts à {results.get('prompt_tokens')} Tokens, "
             f"{results.get('output_tokens')} Output-Tokens pro Prompt (EOS ignoriert).", "",
             "| Umgebung | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()]
    if measured:
        lines.append("| gemessen | " + ", ".join(f"{k}: {v}" for k, v in measured.items()) + " |")
    lines.append("")
    rows = [("| Messung | Output-Tokens/s | Sekunden | Anmerkung |"), "|---|---|---|---|"]

    def row(label, rec, note=""):
        if rec and "tokens_per_s" in rec:
            rows.append(f"| {label} | {rec['tokens_per_s']} | {rec['seconds']} | {note} |")

    for mode in ("graphs", "eager"):
        if mode in results:
            r = results[mode]
            row(f"vLLM offline, {results.get('prompts')} Prompts, {mode}", r["batch_256"], f"Engine-Start {r['startup_s']} s")
            row(f"vLLM Batch 1, {mode}", r["batch_1"])
    row("Sequentielle Schleife (16 Anfragen nacheinander)", results.get("sequential_16"))
    if "generation_step" in results:
        row("Generierungs-Schritt des Kurses (JSON-Schema, validiert)", results["generation_step"],
            f"{results['generation_ratio']:.0%} des rohen vLLM-Durchsatzes")
        row("Rohes vLLM, gleiche Prompts, gleiche Länge je Anfrage", results["generation_raw"])
        row("Rohes vLLM, gleiche Prompts, alle mit mittlerer Länge", results.get("generation_raw_uniform"))
        row("Generierungs-Schritt als Schleife (16 Anfragen nacheinander)", results.get("generation_sequential"))
    for label in ("lora", "lora-tuned"):
        if label in results:
            r = results[label]
            for k in ("0", "1", "4"):
                row(f"{label}: {k} Adapter", r["runs"][k], f"Verhältnis zu 0: {r['runs'][k]['tokens_per_s'] / r['runs']['0']['tokens_per_s']:.2f}; Settings {r['settings']}")
    lines += rows + [""]
    lora_runs = [(k, results[k]) for k in ("lora", "lora-tuned") if k in results and "runs" in results[k]]
    if lora_runs:
        lines += ["## Einordnung LoRA", ""]
        for k, r in lora_runs:
            lines.append(f"- `{k}` ({r['settings']}): 1 Adapter {r['ratio_1']:.0%}, 4 Adapter gemischt "
                         f"{r['ratio_4']:.0%} des Durchsatzes derselben Engine ohne Adapter "
                         f"({'innerhalb' if r['ratio_4'] >= 0.9 else 'außerhalb'} der 10-%-Marke).")
        lines += ["", "Was den Abstand schließt: `max_lora_rank` genau auf den Rang der Adapter setzen (hier 16) "
                  "und `max_loras` auf die Zahl gleichzeitig aktiver Adapter (hier 4), damit alle Adapter im "
                  "GPU-Slot bleiben und kein Austausch zwischen Batches nötig ist; ein Aufwärmlauf lädt sie vorab. "
                  "Die Messung hat Rauschen von einigen Prozent zwischen Läufen.", ""]
    lines += decode_section(results)
    if "generation_step" in results:
        lines += generation_section(results)
    if "qlora" in results and "peak_memory_gb" in results["qlora"]:
        q = results["qlora"]
        mem_ok, speed_ok = q["peak_memory_gb"] <= QLORA_MAX_GB, q["tokens_per_s"] >= QLORA_MIN_TOKENS_PER_S
        lines += ["## QLoRA über den `train`-Schritt des Kurses", "",
                  (f"Batch {q['batch']} Tokens, {q['steps']} Schritte, NF4 + Double Quant, LoRA r16 auf allen "
                   "linearen Schichten, Gradient Checkpointing, paged AdamW 8-bit (Profil `h100`), "
                   "Trainingsdaten: Gold-Fragen mit auf genau 1024 Tokens verlängertem Kontext."), "",
                  "| Peak-Speicher (GB) | Tokens/s | Sekunden | Tokens pro Beispiel | trainierbare Parameter |",
                  "|---|---|---|---|---|",
                  (f"| {q['peak_memory_gb']} | {q['tokens_per_s']} | {q['seconds']} | "
                   f"{q['train_tokens_per_example']} | {q['trainable_parameters']:,} |"), "",
                  (f"- Speicher: {q['peak_memory_gb']} GB Peak (`torch.cuda.max_memory_allocated` während des "
                   f"Trainings), Ziel ≤ {QLORA_MAX_GB} GB: {'erreicht' if mem_ok else 'verfehlt'}."),
                  (f"- Durchsatz: {q['tokens_per_s']} Tokens/s, Ziel ≥ {QLORA_MIN_TOKENS_PER_S} Tokens/s (die rohe "
                   f"QLoRA-Trainingsschleife auf einer H100): {'erreicht' if speed_ok else 'verfehlt'}."),
                  ""]
    lines += judge_section(results)
    missing = [name for name, key in (("generation", "generation_step"), ("qlora", "qlora")) if key not in results]
    if missing:
        lines += [f"Noch nicht auf der GPU gemessen: {', '.join(missing)} "
                  f"(`python -m helpers bench-gpu {' '.join(missing)}`).", ""]
    errors = {k: v for k, v in results.items() if isinstance(v, dict) and "error" in v}
    if "error" in results:
        lines += [f"Fehler: {results['error']}", ""]
    for k, v in errors.items():
        lines += [f"Fehler in {k}: {v['error']}", ""]
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels, values = [], []
        for line in rows[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            labels.append(cells[0])
            values.append(float(cells[1]))
        if labels:
            fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
            ax.barh(labels[::-1], values[::-1], color="tab:blue")
            ax.set_xscale("log")
            ax.set_xlabel("Output-Tokens pro Sekunde (log)")
            ax.set_title(env.get("gpu", "GPU"))
            fig.tight_layout()
            fig.savefig(path.with_suffix(".png"), dpi=100)
            plt.close(fig)
            lines += [f"![Durchsatz]({path.with_suffix('.png').name})", ""]
    return io.write_text(path, "\n".join(lines))
