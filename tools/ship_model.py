"""Copy a finished training run's model into the package as a shipped pretrained model and
record how it was trained (TRAINING.md beside the weights).

    python tools/ship_model.py runs/perov5 perov-5 \
        --command "autoperi train configs/perov5.yaml --out runs/perov5"
"""

import argparse
import csv
import json
import shutil
from pathlib import Path

from autoperi.config import Config

ROOT = Path(__file__).parents[1] / "src/autoperi/pretrained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--command", required=True, help="the command that trained it")
    args = parser.parse_args()
    source = args.run / "model"
    target = ROOT / args.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    rows = list(csv.DictReader((args.run / "train_log.csv").open()))
    last = rows[-1]
    val = [r for r in rows if r.get("val_loss")]
    info = json.loads((source / "info.json").read_text())
    size = (target / "model.safetensors").stat().st_size / 1e6
    minutes = info.get("seconds_this_session", 0) / 60
    first, final = val[0], val[-1]
    losses = ", ".join(f"{k.removeprefix('train_')} {float(v):.4f}" for k, v in last.items()
                       if k.startswith("train_") and v)
    init_from = Config.load(target / "config.yaml").train.init_from
    fine_tune = (f"\n- `config.yaml` records `train.init_from: {init_from}`: training from it "
                 f"again fine-tunes those weights; add `--train.init_from=` to start from "
                 f"scratch" if init_from else "")
    (target / "TRAINING.md").write_text(f"""# {args.name}: how this model was trained

- Command: `{args.command}` (config: `config.yaml` here, a complete snapshot){fine_tune}
- Data: {info.get('dataset_summary', '?')}
- Split: 80/10/10 stratified by space group, seed from `data.seed` in config.yaml; only the
  train split was used for training, val for the validation loss, test held out for benchmarks.
- Steps: {info.get('steps')}, train crystals: {info.get('train_crystals')},
  processes: {info.get('world_size', 1)}
- Wall time (last session of the run): {minutes:.1f} min on a shared 2-core CPU
  (1 thread, bf16 autocast where configured)
- Final training losses (step {last['step']}): {losses}
- Validation loss (EMA weights): first {float(first['val_loss']):.4f} at step {first['step']},
  last {float(final['val_loss']):.4f} at step {final['step']}
- Weights: EMA, safetensors, {size:.1f} MB; AutoPeri {info.get('version')}
""")
    shutil.copy(args.run / "train_log.csv", target / "train_log.csv")
    print(f"shipped {args.run} as {target}")


if __name__ == "__main__":
    main()
