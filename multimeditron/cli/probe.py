"""`multimeditron probe`: evaluate experts' frozen features on labelled images (kNN, linear, logreg, fewshot)."""
from __future__ import annotations

import argparse

from multimeditron.cli.recipe_flags import SPEC_HELP as _ONE_SPEC
from multimeditron.cli.recipe_flags import (
    SWITCH,
    Shorthand,
    add_recipe_arguments,
    bad_image_shorthand,
    comma_ints,
    overlap_shorthand,
    threads_shorthand,
)
from multimeditron.dtypes import DTYPES
from multimeditron.probing.recipe import protocol_list

SPEC_HELP = _ONE_SPEC + "; repeat for several experts"


SHORTHANDS = [
    Shorthand("--expert", "experts", SPEC_HELP, type=str, append=True, metavar="SPEC"),
    Shorthand("--tiny", "tiny", "build every expert's tiny architecture (smoke runs)", type=SWITCH),
    Shorthand("--data", "data.path", "an image folder ROOT/{train,val,test}/<class>/ or a parquet/arrow table (file, "
              "folder or save_to_disk dataset)", type=str, metavar="PATH"),
    Shorthand("--protocol", "probe.protocols", "knn, linear, logreg, fewshot, a comma-separated list, or all",
              type=protocol_list, metavar="NAMES"),
    Shorthand("--out", "out", "write results.json/.csv/.md and plots/ here (default: print only)", type=str,
              metavar="DIR"),
    Shorthand("--image-column", "data.image_column", "table: the image column (`image`, else its one image-typed "
              "column)", type=str),
    Shorthand("--label-column", "data.label_columns", "table: the label column (default: `label`); several = "
              "multi-label, each 0/1", type=str, append=True, metavar="NAME"),
    Shorthand("--split-column", "data.split_column", "table: the column with train/val/test"),
    Shorthand("--val-fraction", "data.val_fraction", "share of train carved into val when there is no val split "
              "(whole patients/studies)"),
    Shorthand("--intensity", "data.intensity", "ct ([-1024, 600] HU), mri (5th-95th percentile), range:LOW,HIGH or "
              "percentile:LOW,HIGH", type=str, metavar="WINDOW"),
    Shorthand("--ordinal", "data.ordinal", "classes are ordered grades: quadratic-weighted kappa", type=SWITCH),
    bad_image_shorthand(),
    overlap_shorthand(),
    Shorthand("--batch-size", "embedding.batch_size", "images per embedding batch"),
    Shorthand("--workers", "embedding.workers", "image-decoding worker processes"),
    Shorthand("--device", "embedding.device", "default: cuda when available, else cpu", type=str),
    Shorthand("--dtype", "embedding.dtype", "one of " + ", ".join(DTYPES), type=str),
    Shorthand("--cache-dir", "embedding.cache_dir", "embedding cache (default: OUT/cache, or "
              "~/.cache/multimeditron/probe without --out)", type=str, metavar="DIR"),
    Shorthand("--no-cache", "embedding.cache", "always recompute the embeddings", type=SWITCH, value=False),
    Shorthand("--k", "probe.k", "kNN k grid, comma-separated", type=comma_ints),
    Shorthand("--shots", "probe.shots", "few-shot N per class (probe.fewshot_sampling systematic: N in total), "
              "comma-separated", type=comma_ints),
    Shorthand("--draws", "probe.draws", "few-shot random draws per N"),
    Shorthand("--linear-epochs", "probe.linear_epochs", "epochs of the linear heads"),
    Shorthand("--select-metric", "probe.select_metric", "what hyperparameters maximise on val (retfound: mean of "
              "macro F1, AUROC and kappa)"),
    Shorthand("--bootstrap", "probe.bootstrap", "bootstrap resamples (0: no intervals)"),
    Shorthand("--seed", "probe.seed", "seeds val carving, the linear heads, few-shot draws, bootstrap and any "
              "random-weight expert"),
    threads_shorthand(),
]


def protocol_plan(method) -> str:
    """Every protocol setting a paper's recipe may change, in one line (the dry run's)."""
    return (f"knn softmax over {'the top max k' if method.knn_softmax_over == 'max_k' else 'the k neighbours'}, "
            f"ML-kNN counts each training row {'itself' if method.mlknn_count_self else 'among the others only'}; "
            f"linear: lrs {method.linear_lrs}, batch {method.linear_batch_size}, {method.linear_epochs} epochs, "
            f"features {'standardised' if method.linear_standardise else 'raw'}, binary "
            f"{'one logit + BCE' if method.one_logit else 'two logits + cross-entropy'}; logreg C "
            f"{method.c_grid}, max_iter {method.logreg_max_iter}; chosen setting "
            f"{'retrained on train + val' if method.retrain_on_trainval else 'trained on train only'} before test; "
            f"fewshot {method.fewshot_sampling} sampling, {method.fewshot_head} head; paper metric sets "
            f"{method.paper_metrics or 'none'}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from multimeditron.probing.recipe import ProbeRecipe

    add_recipe_arguments(parser, ProbeRecipe, SHORTHANDS)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import dataclasses

    from multimeditron.adaptation.experts import spec_text
    from multimeditron.cli.recipe_flags import load_command_recipe
    from multimeditron.data.intensity import parse_window
    from multimeditron.data.labelled_images import load_labelled_images
    from multimeditron.errors import UsageError
    from multimeditron.inference import resolve_device
    from multimeditron.probing.recipe import ProbeRecipe
    from multimeditron.probing.report import (
        comparison_table,
        markdown_table,
        per_label_table,
    )
    from multimeditron.probing.run import ProbeSettings, probe
    from multimeditron.probing.specs import (
        build_probe_expert,
        check_spec,
        parse_spec,
        unique_names,
    )
    from multimeditron.run_folder import check_fresh_out, run_folder
    from multimeditron.threads import use_threads

    recipe = load_command_recipe(ProbeRecipe, args, SHORTHANDS, expert_required=False)
    use_threads(recipe.threads)
    if not recipe.experts:
        raise UsageError("--expert SPEC is required (or experts: [...] in the --config file)")
    check_fresh_out(recipe.out, "probe", overwrite=args.overwrite, dry_run=args.dry_run)
    texts = [spec_text(spec) for spec in recipe.experts]
    parsed_specs = unique_names([parse_spec(text, tiny=recipe.tiny) for text in texts], texts)
    for parsed in parsed_specs:  # a missing checkpoint or an unknown option, before any image is read
        check_spec(parsed)
    section, method, embedding = recipe.data, recipe.probe, recipe.embedding
    data = load_labelled_images(section.path, image_column=section.image_column, label_columns=section.label_columns,
                                split_column=section.split_column, val_fraction=section.val_fraction,
                                seed=method.seed, on_bad_image=section.on_bad_image,
                                allow_overlap=section.allow_overlap)
    cache_dir = recipe.cache_folder()
    settings = ProbeSettings(
        protocols=tuple(method.protocols), batch_size=embedding.batch_size, num_workers=embedding.workers,
        device=str(resolve_device(embedding.device)), dtype=embedding.dtype, cache_dir=cache_dir,
        window=parse_window(section.intensity) if section.intensity else None, bootstrap=method.bootstrap,
        seed=method.seed, ordinal=section.ordinal, select_metric=method.select_metric, draws=method.draws,
        linear_epochs=method.linear_epochs, ks=tuple(method.k), shots=tuple(method.shots),
        protocol_options=method.protocol_options(), paper_metrics=tuple(method.paper_metrics))
    sizes = ", ".join(f"{s} {len(p)}" for s, p in data.splits.items())
    print(f"[probe] data {data.name}: {len(data.classes)} {'labels' if data.multilabel else 'classes'} "
          f"({', '.join(data.classes[:8])}{' ...' if len(data.classes) > 8 else ''}); images: {sizes}")
    for note in data.notes:
        print(f"[probe] note: {note}")
    experts = []
    for parsed in parsed_specs:
        expert = build_probe_expert(parsed, seed=method.seed)  # a random-weight expert is the seed's
        print(f"[probe] expert {parsed.name}: {expert.describe()}"
              f"{'' if expert.supports_layers else ' (no intermediate layers: linear heads on its global output)'}")
        experts.append((parsed.name, expert))
    if args.dry_run:
        print(f"[probe] dry run: protocols {', '.join(method.protocols)}; select on val by {method.select_metric}; "
              f"k grid {method.k}; shots {method.shots} x {method.draws} draws; bootstrap {method.bootstrap}; "
              f"embeddings batch {embedding.batch_size} ({embedding.dtype}, cache {cache_dir or 'off'}); writes "
              f"{recipe.out + '/ results.{json,csv,md}, plots/' if recipe.out else 'nothing (print only)'}")
        print(f"[probe] dry run: {protocol_plan(method)}")
        return 0
    folder = run_folder(recipe.out, "probe", dataclasses.asdict(recipe),
                        {split: data.fingerprint(split) for split in data.splits}, overwrite=args.overwrite,
                        keep=("cache",)) if recipe.out else contextlib.nullcontext()
    with folder:
        result = probe(experts, data, settings, out_dir=recipe.out)
    hits = settings.stats.get("cache_hits", [])
    print(f"[probe] embeddings: {len(settings.stats.get('computed', []))} splits computed, {len(hits)} from the "
          f"cache" + (f" ({cache_dir})" if cache_dir else ""))
    for run_ in result["runs"]:
        for note in run_["notes"]:
            print(f"[probe] {run_['expert']} / {run_['protocol']}: {note}")
    for table in (markdown_table(result), per_label_table(result), comparison_table(result)):
        if table:
            print()
            print(table)
    if recipe.out:
        print(f"\n[probe] results in {recipe.out} (results.json, results.csv, results.md, plots/)")
    return 0
