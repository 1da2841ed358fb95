"""``repan publish`` (alias ``repan-publish``): put a trained deploy checkpoint on the Hugging Face
Hub, or into the package, and record it in the weights manifest.

::

    repan publish runs/a0/deploy.safetensors --metrics runs/a0/final.json --repo ORG/repan_repvgg_a0 --tag fmnist
    repan publish runs/a0/deploy.safetensors --metrics runs/a0/final.json --bundle --tag fmnist
    repan publish runs/a0/deploy.safetensors --metrics runs/a0/final.json --bundle --tag fmnist_long \
        --default --supersede fmnist                     # the new weights replace the old ones

The Hub is reached through huggingface_hub: ``HF_TOKEN`` (or ``hf auth login``) authenticates,
``HF_ENDPOINT`` picks the server. Refuses without metrics and a passing exactness certificate
(see :mod:`repan_zoo.hub.publish` for the metrics-JSON fields).
"""
from __future__ import annotations

import argparse

from ..cli_types import number, writable_dir

NAME = "publish"
HELP = "publish a deploy checkpoint to the Hugging Face Hub (or bundle it) and write its manifest entry"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="deploy checkpoint (.safetensors, written by repan_zoo.checkpoint.save_checkpoint)")
    p.add_argument("--metrics", required=True, help="the training run's metrics JSON (final.json): metrics, recipe, exactness")
    p.add_argument("--tag", required=True, help="pretrained tag, e.g. fmnist_repan (model name becomes MODEL.TAG)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", help="Hub repo id ORG/NAME to create (if needed) and commit to")
    where.add_argument("--bundle", action="store_true", help="copy the checkpoint into repan_zoo/weights/ (offline default)")
    p.add_argument("--license", default="apache-2.0", help="license identifier of the weights")
    p.add_argument("--family", help="manifest file (family) to write; default: from the model name")
    p.add_argument("--manifest-dir", help="manifest folder (default: the repository's weights_manifest/)")
    p.add_argument("--out", type=writable_dir,
                   help="Hub mode: keep the staged files (model.safetensors, config.json, README.md) here")
    p.add_argument("--private", action="store_true", help="Hub mode: create the repo private")
    p.add_argument("--commit-message", help="Hub mode: commit message")
    p.add_argument("--dry-run", action="store_true", help="Hub mode: check and stage only (no upload, no manifest change)")
    p.add_argument("--default", action="store_true",
                   help="list the new weights first: timm.create_model(MODEL, pretrained=True) with no tag loads them")
    p.add_argument("--supersede", nargs="+", default=[], metavar="TAG",
                   help="the entries the new weights replace: tags of the same model, or MODEL.TAG of another (e.g. "
                        "another layout of the family); checked first, then taken out of the manifest (their bundled "
                        "files deleted) once the new entry is written")
    p.add_argument("--max-bundle-mb", type=number(float, 0.0, lo_open=True), default=8.0, help="bundle mode: size limit in MiB")


def run(args: argparse.Namespace) -> int:
    """Publish (or bundle) and print what was written."""
    from ..hub.publish import bundle, publish

    if args.bundle:
        result = bundle(
            args.checkpoint, args.metrics, tag=args.tag, license=args.license, family=args.family,
            manifest_dir=args.manifest_dir, max_bytes=int(args.max_bundle_mb * (1 << 20)),
            default=args.default, supersede=args.supersede,
        )
    else:
        result = publish(
            args.checkpoint, args.metrics, args.repo, tag=args.tag, license=args.license, family=args.family,
            manifest_dir=args.manifest_dir, out_dir=args.out, private=args.private,
            commit_message=args.commit_message, dry_run=args.dry_run, default=args.default, supersede=args.supersede,
        )
    entry = result.entry
    print(f"{entry.name}: {entry.size} bytes, sha256 {entry.sha256}")
    if args.bundle:
        print(f"bundled as {result.folder / entry.filename}")
    elif args.dry_run:
        print(f"dry run: staged in {result.folder}; nothing uploaded, manifest unchanged")
    else:
        print(f"uploaded to {entry.hf_hub_id}@{result.commit}")
    if result.manifest_file is not None:
        print(f"manifest entry written to {result.manifest_file}" + (" (listed first: the default)" if args.default else ""))
    for old in result.superseded:
        print(f"superseded {old.name}" + (f" (bundled file {old.filename} deleted unless still listed)"
                                          if old.source == "bundled" else " (its Hub revision stays downloadable)"))
    return 0
