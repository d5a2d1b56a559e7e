"""Stage: rescore a lattice file (or directory of shards) with word embeddings, sharded and resumable.

Under torchrun each rank takes every WORLD_SIZE-th utterance (sorted ids) and writes its
own part (``hyps.<rank>.txt``, ``rescored.<rank>.pt``, ``errors.<rank>.json``); rank 0
then merges the texts into ``hyps.txt``. An utterance already in a rank's ``hyps`` part is
skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from tqdm import tqdm

from rescorer.corpora.text_sources import large_word_list
from rescorer.decoding.transcript_vote import vote
from rescorer.formats.frames import batches_by_frames
from rescorer.formats.transcripts import TranscriptError, read_transcripts
from rescorer.formats.utterances import read_utterance_features
from rescorer.formats.word_list import WordListError, read_word_list
from rescorer.lattice.word_lattice import load_word_lattices, prune, save_word_lattices
from rescorer.rescore import Rescorer, tuned_config_path
from rescorer.stages import StageError
from rescorer.transcript_hits import check_confidences, load_hit_lm, spot_utterance
from rescorer.utils import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class RescoreSummary:
    """What one rank did: its errors by utterance, and (rank 0) the merged hyps.txt."""

    rank: int
    world_size: int
    errors: Dict[str, str] = field(default_factory=dict)
    hyps_path: Optional[Path] = None
    merged_utterances: int = 0


def rescore_lattices(
    model_dir,
    lattices,
    features,
    out_dir,
    recover_oov: bool = False,
    word_list=None,
    word_list_size: int = 200000,
    device: Optional[str] = None,
    prune_posterior: float = 1e-4,
    prune_scale: float = 1.0,
    config_name: str = "rescorer.json",
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    progress: bool = True,
    batch_frames: int = 20000,
    span_encoding: str = "auto",
    compute_type: str = "float32",
    transcripts=None,
    transcript_list=None,
    transcript_mode: str = "spot",
    ctc_model_dir=None,
) -> RescoreSummary:
    """Rescore this rank's share of ``lattices``; rank and world size default to torchrun's RANK/WORLD_SIZE.

    A bad lattice or an utterance without features costs that utterance only (listed in
    the rank's errors file); a missing model or tuned configuration, or a bad word list, is
    a StageError. ``word_list``: OOV recovery's list file (``formats.word_list``; default
    the first ``word_list_size`` words of ``large_word_list``).
    Utterances are rescored in batches of at most ``batch_frames`` padded feature frames
    (the embedder runs once per batch; 0: one utterance at a time); the hypotheses are part
    of the output after each batch.

    ``transcripts``: a second recogniser's transcript file (``rescorer transcribe``); its words
    from ``transcript_list`` (default: ``word_list``) that the rescored 1-best lacks are put in
    it where the tuned gate keeps them (``RescoreConfig.transcript_*``, ``rescorer.transcript_hits``),
    and listed per utterance with their spans in ``transcript_hits.<rank>.json``. With
    ``transcript_mode="vote"`` the transcript is the output instead, the rescored 1-best's word
    taken where the transcript is unsure and the lattice sure (``decoding.transcript_vote``, the
    thresholds ``RescoreConfig.vote_*`` that ``whisper_lattice_vote`` tuned on dev).

    ``ctc_model_dir``: the embedding + CTC fusion instead (``rescore_ctc.CtcFusion``) with that CTC
    model's spelling scores, under a config ``awe_ctc_rescore`` tuned (``config_name``, e.g.
    ``rescorer_ctc_fusion.json`` from ``rescorer tune --save-config``: its ``ctc_scale``,
    ``ctc_norm``, ``ctc_temperature``, and beside them the spotter's settings, ``ctc_spotting``);
    with ``recover_oov`` the list's words are recovered from both the embedding and the spotter.
    """
    if transcript_mode not in ("spot", "vote"):
        raise StageError(f"transcript mode must be spot or vote, not {transcript_mode!r}")
    voting = transcript_mode == "vote"
    if voting and not transcripts:
        raise StageError("--transcript-mode vote votes the lattice's words into a transcript: give --transcripts")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    try:  # a bad list is named before any work
        listed = read_word_list(word_list) if recover_oov and word_list else None
        if transcripts and not voting and not (transcript_list or word_list):
            raise StageError("--transcripts needs the words it may add: --transcript-list FILE (or --word-list FILE)")
        # the words a transcript may add: needed to spot them, and by a vote tuned on spotted paths (below)
        spot_list = set(read_word_list(transcript_list or word_list)) if transcripts and (
            not voting or transcript_list or word_list) else None
    except WordListError as e:
        raise StageError(str(e)) from e
    try:
        spoken = read_transcripts(transcripts) if transcripts else None
    except TranscriptError as e:
        raise StageError(str(e)) from e
    outdir = Path(out_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    lats = load_word_lattices(lattices)
    try:
        rescorer = Rescorer.from_dir(model_dir, device=device, config_name=config_name, span_encoding=span_encoding,
                                     compute_type=compute_type)
    except FileNotFoundError as e:
        raise StageError(str(e)) from e
    feats = read_utterance_features(features, expect=rescorer.feature_spec).by_id()
    cfg = rescorer.config
    if recover_oov and cfg.recovery_abstained():  # every added word would be priced out: spare the search
        log.warning("%s abstained from OOV recovery (on dev the added words did not help): rescoring without it, "
                    "as its output would be the same", config_name)
        recover_oov = False
    recovery_list = (listed if word_list else large_word_list(word_list_size)) if recover_oov else None
    fusion, ctc_feats = _ctc_fusion(rescorer, model_dir, ctc_model_dir, features, recovery_list, config_name, device,
                                    bool(transcripts)) if ctc_model_dir else (None, None)
    if recover_oov and fusion is None:  # (the fusion searches the same list, set there)
        rescorer.set_vocabulary(recovery_list)
    gate = cfg.transcript_gate()
    vote_gate = cfg.vote_spot_hit_gate() if voting else None  # a vote tuned on the 1-best with the list words spotted in
    if voting:
        try:
            check_confidences(spoken, True, "the vote weighs them: transcribe with rescorer transcribe")
        except ValueError as e:
            raise StageError(str(e)) from e
        if cfg.vote_max_confidence is None or cfg.vote_min_posterior is None:
            log.warning("%s holds no vote thresholds (whisper_lattice_vote not tuned, or dev abstained): the "
                        "transcripts are output as they are", config_name)
        elif cfg.vote_spot_gate is not None and spot_list is None:
            raise StageError(f"{config_name}'s vote was tuned on the 1-best with the transcript's list words spotted "
                             "in (vote_spot_gate): give the list it was tuned with, --transcript-list FILE (or --word-list FILE)")
    elif spoken is not None:
        try:
            check_confidences(spoken, gate.confidence is not None, "retune without confidence gates (--whisper-confidence-gates none)")
        except ValueError as e:
            raise StageError(str(e)) from e
        if cfg.transcript_abstain:
            log.warning("%s: dev tuning found that the transcript's list words do not help (transcript_abstain): "
                        "none is added", config_name)
    try:  # the LM of each hit's lm_gain, where a tuned hit model reads it; named before any utterance is rescored
        hit_lm = load_hit_lm(cfg.transcript_hit_lm) if spoken is not None and cfg.hit_models_weighing_lm() else None
    except (OSError, ValueError) as e:
        raise StageError(str(e)) from e
    part_txt = outdir / f"hyps.{rank}.txt"
    done = {}
    if part_txt.exists():
        done = dict(line.split("\t", 1) for line in part_txt.read_text().splitlines() if "\t" in line)
    hits_json = outdir / f"transcript_hits.{rank}.json"
    hits_done = json.loads(hits_json.read_text()) if spoken is not None and hits_json.exists() else {}
    no_transcript = []
    mine = [u for k, u in enumerate(sorted(lats)) if k % world == rank]
    summary = RescoreSummary(rank=rank, world_size=world)
    rescored = []
    todo = []
    for uid in mine:
        if uid in done:
            continue
        if uid not in feats:
            summary.errors[uid] = "no features for this utterance"
            continue
        todo.append(uid)
    bar = tqdm(total=len(todo), desc=f"rescoring (rank {rank})", disable=rank != 0 or not progress)
    for batch in batches_by_frames({u: int(feats[u].shape[0]) for u in todo}, batch_frames) if batch_frames > 0 \
            else [[u] for u in todo]:
        pruned, results = {}, {}
        for uid in batch:
            try:
                pruned[uid] = prune(lats[uid], prune_posterior, scale=prune_scale)
            except ValueError as e:  # a bad lattice costs that utterance only
                summary.errors[uid] = str(e)
        try:  # the batch's spans embedded in one encoder pass
            results = dict(zip(pruned, _rescore_batch(rescorer, fusion, [pruned[u] for u in pruned], list(pruned), feats,
                                                      ctc_feats, recover_oov)))
        except ValueError:  # a bad lattice or features in the batch: one at a time, so it costs that utterance only
            for uid in pruned:
                try:
                    results[uid] = _rescore_batch(rescorer, fusion, [pruned[uid]], [uid], feats, ctc_feats, recover_oov)[0]
                except ValueError as e:
                    summary.errors[uid] = str(e)
        for uid, res in results.items():
            rescored.append(res.lattice)
            done[uid] = res.hypothesis.text
            if voting:
                if uid not in spoken.words:
                    no_transcript.append(uid)
                    continue
                words = spoken.words[uid]
                if cfg.vote_max_confidence is not None and cfg.vote_min_posterior is not None:
                    path, posts = res.hypothesis.words, res.confidences
                    if vote_gate is not None:  # the transcript's words the audio confirms stand on the lattice's side too
                        path, posts = spot_utterance(rescorer, path, words, spot_list, feats[uid], cfg.oov_min_letters,
                                                     spoken.confidences.get(uid), posts, hit_lm).spotted_path(vote_gate)
                    words = vote(words, spoken.confidences.get(uid), [w.word for w in path], posts,
                                 cfg.vote_max_confidence, cfg.vote_min_posterior, cfg.vote_max_drop_confidence)
                done[uid] = " ".join(words)
            elif spoken is not None and not cfg.transcript_abstain:
                if uid not in spoken.words:
                    no_transcript.append(uid)
                    continue
                spotted = spot_utterance(rescorer, res.hypothesis.words, spoken.words[uid], spot_list, feats[uid],
                                         cfg.oov_min_letters, spoken.confidences.get(uid), res.confidences, hit_lm)
                words, added = spotted.spotted(gate)
                done[uid] = " ".join(w.word for w in words)
                hits_done[uid] = [[w, round(a, 3), round(b, 3)] for w, a, b in added]
        if spoken is not None and not voting:  # before the hypotheses, so a resumed run never lacks an utterance's hits
            atomic_write_text(hits_json, json.dumps(hits_done, indent=1, sort_keys=True))
        atomic_write_text(part_txt, "".join(f"{u}\t{t}\n" for u, t in sorted(done.items())))
        bar.update(len(batch))
    bar.close()
    if no_transcript:
        log.warning("%s lacks %d utterance(s) (%s): %s", transcripts, len(no_transcript),
                    "the rescored 1-best output" if voting else "rescored without its words",
                    ", ".join(no_transcript[:5]))
    if rescored:
        save_word_lattices(outdir / f"rescored.{rank}.pt", rescored)
    if summary.errors:
        atomic_write_text(outdir / f"errors.{rank}.json", json.dumps(summary.errors, indent=1))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
    if rank == 0:
        lines = []
        for r in range(world):
            p = outdir / f"hyps.{r}.txt"
            if p.exists():
                lines += p.read_text().splitlines()
        summary.hyps_path = outdir / "hyps.txt"
        summary.merged_utterances = len(lines)
        atomic_write_text(summary.hyps_path, "\n".join(sorted(lines)) + "\n")
    return summary


def _ctc_fusion(rescorer, model_dir, ctc_model_dir, features, words, config_name: str, device, with_transcripts: bool):
    """(the fusion ``rescore_lattices`` runs with ``ctc_model_dir``, the features its CTC model reads:
    None where they are the embedder's);
    a StageError when the config or the model cannot serve."""
    from rescorer.decoding.ctc_scores import CtcPosteriors
    from rescorer.rescore_ctc import CtcFusion, FusionConfig

    if with_transcripts:
        raise StageError("--ctc-model-dir (the CTC fusion) and --transcripts do not combine: rescore with one of them")
    if rescorer.config.ctc_norm is None:
        raise StageError(f"{config_name} was not tuned for the CTC fusion (no ctc_norm): rescorer tune --methods "
                         "awe_ctc_rescore --save-config writes rescorer_ctc_fusion.json; pass it with --config-name")
    try:
        posteriors = CtcPosteriors.from_dir(ctc_model_dir, device=device)
    except (FileNotFoundError, ValueError) as e:  # no checkpoint there, or a file that is not one
        raise StageError(str(e)) from e
    path = tuned_config_path(model_dir, config_name)
    saved = json.loads(path.read_text()) if path.exists() else {}  # the file Rescorer.from_dir read its scales from
    _check_tuned_checkpoint(path.name, saved, ctc_model_dir, posteriors.model_sha256)
    same_frames = posteriors.feature_spec == rescorer.feature_spec  # then the embedder's frames serve (read once)
    ctc_feats = None if same_frames else read_utterance_features(features, expect=posteriors.feature_spec).by_id()
    spotting = _tuned_spotting(path, saved)
    return CtcFusion(rescorer, posteriors, words, FusionConfig(spotting=spotting, norms=(rescorer.config.ctc_norm,))), ctc_feats


def _check_tuned_checkpoint(config_name: str, saved: dict, given, sha256: Optional[str]) -> None:
    """The fusion's scales hold for the CTC checkpoint they were tuned with (``ctc_model_sha256`` in
    the config file ``saved``, where recorded): another one, e.g. the run's best.pt for a config tuned
    with its best_loss.pt, is a StageError naming both, not a silent mismatch."""
    tuned = saved.get("ctc_model_sha256") if isinstance(saved, dict) else None
    if tuned and sha256 and tuned != sha256:
        raise StageError(f"{config_name} was tuned with the CTC checkpoint {saved.get('ctc_model_dir')} (sha256 "
                         f"{tuned[:12]}...), not {given} (sha256 {sha256[:12]}...): pass that checkpoint to "
                         f"--ctc-model-dir, or tune the fusion again with this one")


def _tuned_spotting(path, saved: dict):
    """The fusion's spotter settings saved beside its scales (``ctc_spotting`` of the config file
    ``saved``, read from ``path``; the defaults where an older file has none); a malformed entry is a
    StageError naming the file."""
    from rescorer.decoding.word_spotting import SpottingConfig

    spotting = saved.get("ctc_spotting") if isinstance(saved, dict) else None
    if spotting is None:
        return SpottingConfig()
    try:
        if not isinstance(spotting, dict) or not all(isinstance(v, (int, float)) for v in spotting.values()):
            raise ValueError(f"expected numbers by name, got {spotting!r}")
        return SpottingConfig(**spotting)
    except (TypeError, ValueError) as e:
        raise StageError(f"{path}: ctc_spotting: {e}") from e


def _rescore_batch(rescorer, fusion, lats, uids, feats, ctc_feats, recover: bool):
    """Embedding rescoring of the utterances, or with ``fusion`` the fused rescoring (its CTC model's log-probs first)."""
    if fusion is None:
        return rescorer.rescore_batch(lats, [feats[u] for u in uids], recover=recover)
    ctc_feats = feats if ctc_feats is None else ctc_feats
    log_probs = fusion.posteriors.reuse_or_compute({u: ctc_feats[u] for u in uids})
    return fusion.rescore_batch(lats, [feats[u] for u in uids], [log_probs[u] for u in uids], recover=recover)
