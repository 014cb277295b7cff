"""``edgemm distill data|speech``: the glue between the command line and the data engine and trainer."""

from __future__ import annotations

import logging

from edgemm.export.distill.data import build_corpus, load_corpus, read_manifest
from edgemm.export.distill.train import distill_speech, export_student, teacher_bundle
from edgemm.export.evaluation.clips import selection_clips
from edgemm.export.quiet import quiet_libraries

log = logging.getLogger("edgemm.distill")


def run_distill(args) -> int:
    if args.target == "data":
        build_corpus(args.out, seed=args.seed, examples=args.examples, fragments=args.fragments)
        summary = read_manifest(args.out).get("summary", {})
        log.info("wrote %s: %s", args.out, summary)
        return 0
    corpus = load_corpus(args.data)
    eval_clips = selection_clips() if args.select_on == "selection" else None  # None: the development clips
    with quiet_libraries():
        recipe = distill_speech(
            args.teacher,
            args.out,
            corpus,
            steps=args.steps,
            lengths=args.lengths,
            decoder_layers=args.decoder_layers,
            eval_every=args.eval_every,
            eval_clips=eval_clips,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            resume=args.resume,
            warmup_steps=args.warmup_steps,
            patience=args.patience,
            weights={"ce": args.ce_weight},
            train_decoder=not args.freeze_decoder,
        )
    bundle = args.bundle or args.out / "bundle"
    teacher = args.teacher_bundle or teacher_bundle(args.teacher, args.quant)
    if teacher is None:
        log.info("no %s bundle of the teacher is built: the manifest records the student's WER alone", args.quant)
    export_student(args.out / "student", bundle, recipe=recipe, quant=args.quant, teacher=teacher)
    log.info("student bundle: %s", bundle)
    return 0
