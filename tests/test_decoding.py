"""k2 decoding on a tiny vocabulary with hand-made CTC log-probs."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from rescorer.decoding import decode as D
from rescorer.models.ctc import ctc_greedy_decode
from rescorer.tokens import TOKEN_ID, TOKENS

from conftest import HAVE_K2, PlantedCode

HAVE_WORD_LATTICE = importlib.util.find_spec("rescorer.lattice") is not None

LM_TEXT = [s.split() for s in [
    "the cat sat", "the dog sat on the mat", "a cat ran", "the cat ran on the mat", "a dog sat", "cat sat",
    "the mat sat", "a mat ran",
]]


def logprobs(spec, peak=0.9):
    """[T, 29] log-probs; each frame a char ('_' = blank) or a dict {char: prob}."""
    rows = []
    for f in spec:
        probs = {f: peak} if isinstance(f, str) else dict(f)
        rest = (1.0 - sum(probs.values())) / (len(TOKENS) - len(probs))
        row = torch.full((len(TOKENS),), math.log(rest))
        for c, p in probs.items():
            row[0 if c == "_" else TOKEN_ID[c]] = math.log(p)
        rows.append(row)
    return torch.stack(rows)


def batch(*specs):
    lps = [logprobs(s) for s in specs]
    return torch.nn.utils.rnn.pad_sequence(lps, batch_first=True), torch.tensor([len(x) for x in lps])


CAT_SAT = list("_cat|_sat|_")
XYZ_SAT = list("_xyz|_sat|_")  # "xyz" is not in the LM (3 letters from any LM word)
AMBIG = ["_", {"c": 0.5, "m": 0.45}, "a", "t", "|", "_", "s", "a", "t", "|", "_"]


@pytest.fixture(scope="module")
def lang(tmp_path_factory):
    if not HAVE_K2:
        pytest.skip("k2 not installed")
    from rescorer.decoding.graphs import build_lang_dir, load_lang_dir

    d = build_lang_dir(LM_TEXT, tmp_path_factory.mktemp("lang"), order=3, source="test")
    return load_lang_dir(d)


def test_ctc_greedy():
    lp, lens = batch(CAT_SAT, list("_cc_aat|||_"))
    assert D.ctc_greedy_words(lp, lens) == [["cat", "sat"], ["cat"]]


@pytest.mark.lattice
@pytest.mark.skipif(not HAVE_K2, reason="k2 not installed")
class TestLattices:
    def test_lang_dir_files(self, lang):
        for f in ("tokens.txt", "words.txt", "lexicon.txt", "lm.arpa", "G.fst.txt", "HLG.pt", "lang.json", "lm_text.txt"):
            assert (lang.dir / f).is_file(), f
        assert lang.words["<eps>"] == 0 and lang.words["<unk>"] == 1 and "#0" in lang.words
        assert lang.tokens["#0"] == len(TOKENS) and lang.tokens["<blk>"] == 0

    def test_a_crafted_hlg_is_refused_and_runs_nothing(self, lang, tmp_path):
        import shutil

        import k2

        from rescorer.decoding.graphs import load_lang_dir
        from rescorer.formats import UnsafeFileError

        assert isinstance(lang.HLG.aux_labels, k2.RaggedTensor)  # the one object a genuine HLG.pt holds
        d = tmp_path / "lang"
        shutil.copytree(lang.dir, d)
        marker = tmp_path / "ran"
        d_hlg = torch.load(d / "HLG.pt")
        d_hlg["labels_version"] = PlantedCode(marker)
        torch.save(d_hlg, d / "HLG.pt")
        with pytest.raises(UnsafeFileError, match=r"HLG.pt is not a HLG graph file: .*mkdir.*refusing to unpickle"):
            load_lang_dir(d)
        assert not marker.exists()

    def test_hlg_1best_and_frames(self, lang):
        lp, lens = batch(CAT_SAT)
        (lat,) = D.get_lattices(lp, lens, lang.HLG)
        for a in ("frames", "am_scores", "lm_scores", "tokens"):
            assert hasattr(lat, a)
        assert torch.allclose(lat.am_scores + lat.lm_scores, lat.scores)
        h = D.one_best(lat, lang.id2word)
        assert h.word_sequence == ["cat", "sat"]
        assert D.nbest_record(h)["spans"] == [[1, 5], [6, 10]] and h.letters == ["cat", "sat"]  # lattice frames
        assert [(w.start, w.end) for w in h.words] == pytest.approx([(0.04, 0.2), (0.24, 0.4)])  # seconds
        assert h.lm_score < 0 and h.am_score < 0
        # frames: every arc's frame is its source state's depth; token arcs at known frames
        src, dst = lat.arcs.values()[:, 0], lat.arcs.values()[:, 1]
        fr = lat.frames
        for a in range(lat.num_arcs):
            nxt = (src == dst[a]).nonzero().flatten()
            assert all(int(fr[b]) == int(fr[a]) + 1 for b in nxt)
        for c, t in zip("cat|", (1, 2, 3, 4)):
            emits = ((lat.tokens == TOKEN_ID[c]) & (fr == t)).nonzero().numel()
            assert emits > 0, (c, t)
        assert int(fr[lat.labels == -1].max()) == len(CAT_SAT)

    def test_word_outside_lm_is_unk_with_span(self, lang):
        lp, lens = batch(XYZ_SAT)
        (lat,) = D.get_lattices(lp, lens, lang.HLG)
        h = D.one_best(lat, lang.id2word)
        assert h.word_sequence == ["<unk>", "sat"]
        assert D.nbest_record(h)["spans"][0] == [1, 5] and h.letters[0] == "xyz"

    def test_unk_penalty_is_configurable(self, tmp_path):
        from rescorer.decoding.graphs import build_lang_dir, load_lang_dir

        lg = load_lang_dir(build_lang_dir(LM_TEXT, tmp_path / "lang", unk_penalty=30.0))
        (lat,) = D.get_lattices(*batch(XYZ_SAT), lg.HLG)
        assert "<unk>" not in D.one_best(lat, lg.id2word).word_sequence  # forced onto an LM word

    def test_nbest_sorted_contains_1best_and_attention_flips(self, lang):
        (lat,) = D.get_lattices(*batch(AMBIG), lang.HLG)
        best = D.one_best(lat, lang.id2word)
        nb = D.nbest(lat, lang.id2word, num_paths=50)
        assert nb[0].word_sequence == best.word_sequence == ["cat", "sat"]
        assert len(nb) >= 2 and len({tuple(h.word_sequence) for h in nb}) == len(nb)
        assert all(a.score >= b.score for a, b in zip(nb[1:], nb[2:]))
        assert nb[0].score >= nb[1].score
        second = nb[1]
        calls = []

        def scorer(i, seqs):
            calls.append(seqs)
            return torch.tensor([100.0 if s == second.tokens else 0.0 for s in seqs])

        (r,) = D.attention_rescore([nb], scorer, ngram_lm_scale=1.0, attention_scale=1.0)
        assert r.word_sequence == second.word_sequence and r.extra["attention"] == 100.0
        assert calls[0][0] == [TOKEN_ID[c] for c in "cat|sat|"]
        (r,) = D.attention_rescore([nb], lambda i, s: torch.zeros(len(s)))
        assert r.word_sequence == best.word_sequence

    def test_attach_frames_needs_no_topological_numbering_and_names_unreachable_states(self):
        import k2

        # states numbered against the arc order: 0 -> 2 -> 1 -> 3 (final)
        f = k2.Fsa.from_str("0 2 3 0.0\n1 3 -1 0.0\n2 1 4 0.0\n3", acceptor=True)
        D.attach_frames(f)
        assert f.frames.tolist() == [0, 2, 1]
        dead = k2.Fsa.from_str("0 3 3 0.0\n1 2 4 0.0\n2 3 5 0.0\n3 4 -1 0.0\n4", acceptor=True)
        with pytest.raises(ValueError, match="state 1 has arcs but is not reachable"):
            D.attach_frames(dead)
        c = k2.connect(dead)  # what get_lattices does first
        D.attach_frames(c)
        assert c.frames.tolist() == [0, 1]

    def test_attach_frames_rejects_non_ctc_lattice(self):
        import k2

        ok = k2.Fsa.from_str("0 1 3 0.0\n1 2 4 0.0\n2 3 -1 0.0\n3", acceptor=True)
        D.attach_frames(ok)
        assert ok.frames.tolist() == [0, 1, 2]
        bad = k2.Fsa.from_str("0 1 3 0.0\n0 2 5 0.0\n1 2 4 0.0\n2 3 -1 0.0\n3", acceptor=True)
        with pytest.raises(ValueError, match="not a CTC lattice"):
            D.attach_frames(bad)

    def test_word_lattice_arcs(self, lang):
        for spec in (CAT_SAT, XYZ_SAT, AMBIG):
            (lat,) = D.get_lattices(*batch(spec), lang.HLG)
            arcs, finals = D.word_lattice_arcs(lat, lang.id2word)
            # best path over the word arcs == the token lattice's 1-best
            best = {0: (0.0, [])}
            for b, d, w, f, e, am, lm in sorted(arcs, key=lambda x: (x[4], x[0])):
                if b in best and (d not in best or best[b][0] + am + lm > best[d][0]):
                    best[d] = (best[b][0] + am + lm, best[b][1] + [(w, f, e)])
            tot, path = max((best[b][0] + a + l, best[b][1]) for b, (a, l) in finals.items() if b in best)
            h = D.one_best(lat, lang.id2word)
            assert tot == pytest.approx(h.score, abs=1e-4)
            assert [p[0] for p in path] == h.word_sequence and [list(p[1:3]) for p in path] == D.nbest_record(h)["spans"]
        assert any(a[2] == "mat" and a[3:5] == (1, 5) for a in arcs)  # AMBIG keeps the alternative

    def test_word_lattice_for_the_rescorer(self, lang):
        wl = pytest.importorskip("rescorer.lattice.word_lattice")
        import k2

        (lat,) = D.get_lattices(*batch(XYZ_SAT), lang.HLG)
        arcs, finals = D.word_lattice_arcs(lat, lang.id2word)
        w = wl.build_word_lattice(arcs, k2.SymbolTable.from_file(str(lang.dir / "words.txt")), frame_shift=0.04, final_states=finals)
        assert wl.best_path_hypothesis(w).text == "<unk> sat"

    def test_lattice_oracle(self, lang):
        (lat,) = D.get_lattices(*batch(AMBIG), lang.HLG)
        o = D.lattice_oracle(lat, ["mat", "sat"], lang.id2word)
        assert o == {"errors": 0, "hyp": ["mat", "sat"]}
        o = D.lattice_oracle(lat, ["the", "mat", "sat", "on"], lang.id2word)
        assert o["errors"] == 2 and o["hyp"] == ["mat", "sat"]
        o = D.lattice_oracle(lat, [], lang.id2word)
        assert o["errors"] == 2

    def test_save_load_round_trip_and_errors(self, lang, tmp_path):
        from rescorer.formats import token_lattices as IO

        lats = D.get_lattices(*batch(CAT_SAT, XYZ_SAT), lang.HLG)
        p = IO.save_lattices(tmp_path / "lattices.pt", ["u1", "u2"], lats, lang.dir / "words.txt")
        ids, back, info = IO.load_lattices(p, words=lang.dir / "words.txt")
        assert ids == ["u1", "u2"] and info["frame_shift"] == pytest.approx(0.04)
        assert info["words"][1] == "<unk>"
        for a, b in zip(lats, back):
            assert torch.equal(a.frames, b.frames) and torch.equal(a.arcs.values(), b.arcs.values())
        assert D.one_best(back[1], lang.id2word).word_sequence == ["<unk>", "sat"]

        d = torch.load(p, weights_only=True)  # plain tensors + JSON text
        d["format"] = "something/else"
        torch.save(d, tmp_path / "bad_format.pt")
        with pytest.raises(IO.LatticeFormatError, match="expected 'rescorer.token_lattices/2'"):
            IO.load_lattices(tmp_path / "bad_format.pt")
        with pytest.raises(IO.LatticeFormatError, match="symbol table mismatch"):
            IO.load_lattices(p, words=["<eps>", "<unk>", "cat"])
        d = torch.load(p, weights_only=True)
        meta = json.loads(d["meta"])
        meta["attributes"].remove("frames")
        del d["tensors"]["frames"]
        d["meta"] = json.dumps(meta)
        torch.save(d, tmp_path / "no_frames.pt")
        with pytest.raises(IO.LatticeFormatError, match="no 'frames' attribute"):
            IO.load_lattices(tmp_path / "no_frames.pt")
        import k2

        bare = k2.Fsa.from_dict({k: v for k, v in lats[0].as_dict().items() if k != "frames"})
        with pytest.raises(IO.LatticeFormatError, match="frames"):
            IO.save_lattices(tmp_path / "x.pt", ["u"], [bare], lang.dir / "words.txt")
        with pytest.raises(ValueError, match="no 'frames'"):
            D.one_best(bare, lang.id2word)

    def test_decode_cli_end_to_end(self, lang, tmp_path, monkeypatch, capsys):
        """A fake x4-subsampling model whose features carry the token per frame."""
        specs = {"u1": CAT_SAT, "u2": XYZ_SAT, "u3": AMBIG}
        texts = {"u1": "cat sat", "u2": "xyz sat", "u3": "mat sat"}

        class FakeModel(torch.nn.Module):
            subsampling_factor = 4

            def forward(self, feats, lens):
                out_lens = lens // 4
                lp = torch.stack([torch.stack([table[int(v)] for v in f[::4, 0][: int(out_lens.max())]]) for f in feats])
                return lp, out_lens

            def encode(self, feats, lens):
                return self.forward(feats, lens)

            def beam_search_encoded(self, enc, enc_lens, beam=8, ctc_weight=0.0):
                return [[(ids, -1.0)] for ids in ctc_greedy_decode(enc, enc_lens)]

            def score_token_sequences(self, enc_one, seqs):
                assert enc_one.dim() == 2  # [T', C], one utterance
                # strongly prefers "mat sat" (the reference of u3)
                return torch.tensor([50.0 if s == [TOKEN_ID[c] for c in "mat|sat|"] else 0.0 for s in seqs])

        table, feats, offsets = [], [], [0]
        for u in ("u1", "u2", "u3"):
            lp = logprobs(specs[u])
            for row in lp:
                table.append(row)
                x = torch.zeros(4, 80)
                x[:, 0] = len(table) - 1
                feats.append(x)
            offsets.append(offsets[-1] + 4 * len(lp))
        feats.append(torch.zeros(0, 80))
        offsets.append(offsets[-1])  # u4: empty audio
        data = {
            "format": "rescorer.utterances/1", "feats": torch.cat(feats).half(), "offsets": torch.tensor(offsets),
            "texts": [texts["u1"], texts["u2"], texts["u3"], "cat"], "utterance_ids": ["u1", "u2", "u3", "u4"],
            "speakers": ["s"] * 4,
        }
        (tmp_path / "data").mkdir()
        torch.save(data, tmp_path / "data" / "test.pt")
        (tmp_path / "train_words.txt").write_text("cat sat mat the\n")
        monkeypatch.setattr(D, "load_asr_model", lambda d: (FakeModel(), {"train": ""}))
        monkeypatch.setattr(D, "checkpoint_sha256", lambda d, kind: "c" * 64)
        rc = D.main([
            "--model-dir", "m", "--data", str(tmp_path / "data" / "test.pt"), "--lang-dir", str(lang.dir),
            "--out", str(tmp_path / "out"), "--methods", ",".join(D.METHODS),
            "--train-data", str(tmp_path / "train_words.txt"), "--save-nbest", "10", "--save-ctc-log-probs",
        ] + (["--word-lattices"] if HAVE_WORD_LATTICE else []))
        assert rc == 0
        # the model's log-probs, as it gave them, for every decoded utterance (u4 was skipped)
        from rescorer.formats.ctc_log_probs import read_ctc_log_probs

        stored = read_ctc_log_probs(tmp_path / "out" / "ctc_log_probs.pt")
        assert list(stored.log_probs) == ["u1", "u2", "u3"] and stored.model_sha256 == "c" * 64
        assert stored.frame_shift == pytest.approx(0.04)
        for u in ("u1", "u2", "u3"):
            assert torch.allclose(stored.log_probs[u], logprobs(specs[u]).float())
        m = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert list(m["skipped"]) == ["u4"] and "empty audio" in m["skipped"]["u4"]
        g, h, o = (m["methods"][k] for k in ("ctc_greedy", "hlg_1best", "lattice_oracle"))
        # refs: cat sat | xyz sat | mat sat | cat (skipped -> deletion); 7 words, xyz OOV
        assert h["ref_words"] == 7 and h["oov_ref_words"] == 1
        assert h["errors"] == 3 and h["oov_errors"] == 1  # <unk> for xyz, cat for mat, u4 deleted
        assert o["errors"] == 2 and g["errors"] == 2  # oracle: <unk> for xyz, u4; greedy: cat for mat, u4
        assert (tmp_path / "out" / "hyp_lattice_oracle.txt").read_text().splitlines()[2] == "u3 mat sat"
        assert m["methods"]["attention_beam"]["errors"] == 2
        assert m["methods"]["hlg_attention_rescore"]["errors"] == 2  # rescoring fixes u3, keeps <unk>
        rows = [json.loads(x) for x in (tmp_path / "out" / "nbest.jsonl").read_text().splitlines()]
        assert [r["utterance_id"] for r in rows] == ["u1", "u2", "u3"]
        assert rows[1]["nbest"][0]["words"] == ["<unk>", "sat"] and rows[1]["nbest"][0]["spans"][0] == [1, 5]
        assert all(v["rtf"] is not None and v["rtf"] >= 0 for v in m["methods"].values())
        assert m["lm_oov"]["missing_types"] == 1
        hyp = (tmp_path / "out" / "hyp_hlg_1best.txt").read_text().splitlines()
        assert hyp[:2] == ["u1 cat sat", "u2 <unk> sat"]
        from rescorer.formats.token_lattices import load_lattices

        ids, lats, info = load_lattices(tmp_path / "out" / "lattices.pt", words=lang.dir / "words.txt")
        assert ids == ["u1", "u2", "u3"] and info["frame_shift"] == pytest.approx(0.04)
        if HAVE_WORD_LATTICE:
            from rescorer.lattice.word_lattice import best_path_hypothesis, load_word_lattices

            wls = load_word_lattices(tmp_path / "out" / "word_lattices.pt")
            assert best_path_hypothesis(wls["u2"]).text == "<unk> sat"
            assert m["no_lattice"] == []

            # a lattice with no complete path costs that utterance only; none at all is a clear error
            real, calls = D.word_lattice_arcs, []

            def second_has_no_path(lat, id2word):
                calls.append(1)
                return ([], {}) if len(calls) == 2 else real(lat, id2word)

            args = ["--model-dir", "m", "--data", str(tmp_path / "data" / "test.pt"), "--lang-dir", str(lang.dir),
                    "--methods", "hlg_1best", "--train-data", str(tmp_path / "train_words.txt"), "--word-lattices"]
            monkeypatch.setattr(D, "word_lattice_arcs", second_has_no_path)
            assert D.main(args + ["--out", str(tmp_path / "out2")]) == 0
            m2 = json.loads((tmp_path / "out2" / "metrics.json").read_text())
            assert m2["no_lattice"] == ["u2"]
            assert sorted(load_word_lattices(tmp_path / "out2" / "word_lattices.pt")) == ["u1", "u3"]
            monkeypatch.setattr(D, "word_lattice_arcs", lambda lat, id2word: ([], {}))
            assert D.main(args + ["--out", str(tmp_path / "out3")]) == 1
            assert "has a complete path in its lattice" in capsys.readouterr().err


def test_bad_input_messages():
    assert "empty audio" in D.check_utterance(0, "u1", 3000)
    assert "shorter" in D.check_utterance(3, "u1", 3000)
    assert "longer than the model handles" in D.check_utterance(4000, "u1", 3000)
    assert D.check_utterance(100, "u1", 3000) is None
    with pytest.raises(D.DecodeInputError, match="u2.*outside|outside"):
        D.reference_words(["cat sat", "cat 42"], ["u1", "u2"])
    with pytest.raises(D.DecodeInputError, match="not a rescorer.utterances file"):
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".pt") as f:
            torch.save({"format": "x"}, f.name)
            D.load_utterance_data(f.name)


@pytest.mark.lattice
@pytest.mark.skipif(not HAVE_K2, reason="k2 not installed")
def test_empty_output_is_a_clear_error(lang):
    lp, _ = batch(CAT_SAT)
    with pytest.raises(D.DecodeInputError, match="empty audio"):
        D.get_lattices(lp, torch.tensor([0]), lang.HLG)


def test_beam_search_result_formats():
    assert D._best_beam_tokens([([5, 3, 1], -1.0), ([4, 1], -2.0)]) == [5, 3, 1]
    assert D._best_beam_tokens([[5, 3, 1], [4, 1]]) == [5, 3, 1]
    assert D._best_beam_tokens([5, 3, 1]) == [5, 3, 1]
    assert D._best_beam_tokens([]) == []


def test_lm_missing_test_words_message():
    from rescorer.decoding.lm import lm_oov_rate

    cov = lm_oov_rate(["cat", "sat"], "the dog sat on a mat".split())
    msg = D.lm_coverage_message(cov, "exp/lang")
    assert "lacks 83% of the test word types" in msg and "right text" in msg
    assert "1.0" not in (D.lm_coverage_message(lm_oov_rate(["a"], ["a"]), "x") or "")
    assert "OOV rate" in D.lm_coverage_message(lm_oov_rate(["a", "b"], ["a", "c", "a"]), "x")


def test_lexicon_rejects_non_token_words():
    from rescorer.decoding.lexicon import LexiconError, word_table

    with pytest.raises(LexiconError, match="outside the token set"):
        word_table(["cat", "ca7"])
