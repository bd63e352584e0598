"""`multimeditron probe`: evaluate experts' frozen features on labelled images (kNN, linear, logreg, fewshot)."""
from __future__ import annotations

import argparse
from pathlib import Path

from multimeditron.dtypes import DTYPES

SPEC_HELP = ("a registry id with an optional checkpoint: ID[:CHECKPOINT] (everything after the first colon), "
             "timm:NAME[:CHECKPOINT], a saved MultiMeditron model folder DIR or DIR#i (its i-th expert), or a YAML "
             "mapping '{id: ..., checkpoint: ..., image_size: ..., normalization: ..., options: {...}}'; repeat "
             "for several experts")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from multimeditron.probing.metrics import SELECTION_METRICS

    parser.add_argument("--expert", action="append", required=True, metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="an image folder ROOT/{train,val,test}/<class>/ or a parquet/arrow table (file, folder "
                             "or save_to_disk dataset)")
    parser.add_argument("--protocol", default="all", metavar="NAMES",
                        help="knn, linear, logreg, fewshot, a comma-separated list, or all (default)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write results.json/.csv/.md and plots/ here (default: print only)")
    parser.add_argument("--tiny", action="store_true", help="build every expert's tiny architecture (smoke runs)")
    data = parser.add_argument_group("data")
    data.add_argument("--image-column", default=None, help="table: the image column (default: `image`)")
    data.add_argument("--label-column", action="append", default=[], metavar="NAME",
                      help="table: the label column (default: `label`); several = multi-label, each 0/1")
    data.add_argument("--split-column", default="split", help="table: the column with train/val/test")
    data.add_argument("--val-fraction", type=float, default=0.2,
                      help="share of train carved into val when there is no val split (whole patients/studies)")
    data.add_argument("--intensity", default=None, metavar="WINDOW",
                      help="ct ([-1024, 600] HU), mri (5th-95th percentile), range:LOW,HIGH or percentile:LOW,HIGH")
    data.add_argument("--ordinal", action="store_true", help="classes are ordered grades: quadratic-weighted kappa")
    emb = parser.add_argument_group("embedding")
    emb.add_argument("--batch-size", type=int, default=64)
    emb.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    emb.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    emb.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    emb.add_argument("--cache-dir", default=None, metavar="DIR",
                     help="embedding cache (default: OUT/cache, or ~/.cache/multimeditron/probe without --out)")
    emb.add_argument("--no-cache", action="store_true", help="always recompute the embeddings")
    proto = parser.add_argument_group("protocols")
    proto.add_argument("--k", type=_ints, default=None, help="kNN k grid (default 5,10,20,50,100,200,400,800,1000)")
    proto.add_argument("--shots", type=_ints, default=None, help="few-shot N per class (default 1,2,4,8,16)")
    proto.add_argument("--draws", type=int, default=5, help="few-shot random draws per N")
    proto.add_argument("--linear-epochs", type=int, default=100)
    proto.add_argument("--select-metric", default="auroc",
                       choices=SELECTION_METRICS,
                       help="what hyperparameters maximise on val (retfound: mean of macro F1, AUROC and kappa)")
    proto.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    proto.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from multimeditron.data.intensity import parse_window
    from multimeditron.data.labelled_images import load_labelled_images
    from multimeditron.errors import UserError
    from multimeditron.inference import resolve_device
    from multimeditron.probing.protocols import PROTOCOLS
    from multimeditron.probing.report import comparison_table, markdown_table
    from multimeditron.probing.run import ProbeSettings, probe
    from multimeditron.probing.specs import build_probe_expert, parse_spec

    names = [p.strip() for p in args.protocol.split(",") if p.strip()]
    protocols = tuple(PROTOCOLS) if names == ["all"] else tuple(names)
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise UserError(f"--protocol: unknown protocol(s) {unknown}; valid: {', '.join(PROTOCOLS)}, all")
    data = load_labelled_images(args.data, image_column=args.image_column, label_columns=args.label_column,
                                split_column=args.split_column, val_fraction=args.val_fraction, seed=args.seed)
    cache_dir = None if args.no_cache else Path(args.cache_dir or (Path(args.out) / "cache" if args.out else
                                                                    Path.home() / ".cache/multimeditron/probe"))
    settings = ProbeSettings(
        protocols=protocols, batch_size=args.batch_size, num_workers=args.workers,
        device=str(resolve_device(args.device)), dtype=args.dtype, cache_dir=cache_dir,
        window=parse_window(args.intensity) if args.intensity else None, bootstrap=args.bootstrap, seed=args.seed,
        ordinal=args.ordinal, select_metric=args.select_metric, draws=args.draws, linear_epochs=args.linear_epochs,
        **({"ks": args.k} if args.k else {}), **({"shots": args.shots} if args.shots else {}))
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    print(f"[probe] data {data.name}: {len(data.classes)} {'labels' if data.multilabel else 'classes'} "
          f"({', '.join(data.classes[:8])}{' ...' if len(data.classes) > 8 else ''}); images: {sizes}")
    for note in data.notes:
        print(f"[probe] note: {note}")
    experts = []
    for text in args.expert:
        parsed = parse_spec(text, tiny=args.tiny)
        expert = build_probe_expert(parsed, seed=args.seed)
        print(f"[probe] expert {parsed.name}: {expert.describe()}"
              f"{'' if expert.supports_layers else ' (no intermediate layers: linear heads on its global output)'}")
        experts.append((parsed.name, expert))
    result = probe(experts, data, settings, out_dir=args.out)
    hits = settings.stats.get("cache_hits", [])
    print(f"[probe] embeddings: {len(settings.stats.get('computed', []))} splits computed, {len(hits)} from the "
          f"cache" + (f" ({cache_dir})" if cache_dir else ""))
    for run_ in result["runs"]:
        for note in run_["notes"]:
            print(f"[probe] {run_['expert']} / {run_['protocol']}: {note}")
    print()
    print(markdown_table(result))
    comparisons = comparison_table(result)
    if comparisons:
        print()
        print(comparisons)
    if args.out:
        print(f"\n[probe] results in {args.out} (results.json, results.csv, results.md, plots/)")
    return 0
