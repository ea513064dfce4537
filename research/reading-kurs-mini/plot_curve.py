"""Draw the reading probe's learning curve (attempt 3 and attempt 4, the committed Kurs-Mini) into docs/kurs-mini-lernkurve.png.

Usage (repository root): .venv/bin/python research/reading-kurs-mini/plot_curve.py
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
curve = pd.concat([pd.read_csv(HERE / "attempt2-3" / "learning_curve.csv"), pd.read_csv(HERE / "attempt4" / "learning_curve.csv")])
tasks = {"repeat": "Kontext wiederholen", "cloze": "Lückentext (Satzanfang → Rest)", "find": "Satz zu Textstück finden",
         "kv": "Schlüssel → Wert", "ext": "Frage → Satz mit der Antwort", "absent": "„nicht im Text“ erkannt"}
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
for ax, model, title in ((axes[0], "R6X", "Versuch 3 (R6X, 6,2 Mio. Parameter)"), (axes[1], "R9", "Versuch 4: Kurs-Mini (R9, 12,6 Mio. Parameter)")):
    rows = curve[curve.model == model]
    for key, label in tasks.items():
        ax.plot(rows.step, rows[key], marker="o", ms=3, label=label)
    ax.axhline(0.8, color="grey", ls=":", label="Ziel 0,8")
    ax.set_title(title)
    ax.set_xlabel("Vortrainings-Schritt")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("Probe-Genauigkeit (Eval-Dokumente, Zahlen/Namen ersetzt)")
axes[1].legend(fontsize=8, loc="lower right")
fig.tight_layout()
out = HERE.parent.parent / "docs" / "kurs-mini-lernkurve.png"
fig.savefig(out, dpi=110)
print(out)
