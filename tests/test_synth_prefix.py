"""The generator's --shared-prefix option: system prompts and multi-turn conversations
give prefills chained prefix blocks, deterministically, and a simulation hits them."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.jobs import AttentionJob, JobKind
from scheduler.kvcache import prompt_blocks
from scheduler.presets import ModelPreset, get_preset
from scheduler.traces import open_trace, synth, write_trace
from scheduler.traces.importers import BLOCK_TOKENS
from scheduler.traces.synth import SharedPrefix, SynthSpec, generate

TINY = get_preset("tiny")
PREFILLS = {"prefill": 0.8, "decode": 0.2}


def jobs_of(prefix: SharedPrefix | None, *, jobs: int = 300, seed: int = 1,
            preset: ModelPreset = TINY, mix: dict[str, float] | None = None
            ) -> list[AttentionJob]:
    spec = SynthSpec(jobs=jobs, seed=seed, rate=20.0, mix=mix or PREFILLS, prefix=prefix)
    return list(generate(spec, preset))


def prefills(jobs: list[AttentionJob]) -> list[AttentionJob]:
    return [j for j in jobs if j.kind is JobKind.PREFILL]


def later_turns(jobs: list[AttentionJob], system_blocks: int) -> int:
    """Prefills whose ids extend an earlier prefill's whole blocks past the system prompt."""
    seen: dict[tuple[int, ...], int] = {}
    found = 0
    for job in prefills(jobs):
        for n in range(len(job.prefix_blocks), system_blocks, -1):
            earlier = seen.get(job.prefix_blocks[:n])
            if earlier is not None and job.q_len > earlier:
                found += 1
                break
        whole = job.q_len // job.block_tokens
        seen[job.prefix_blocks[:whole]] = job.q_len
    return found


def check_chained(jobs: list[AttentionJob], preset: ModelPreset) -> None:
    """Every prefill names exactly the blocks starting in its prompt; an id always stands
    for the same position after the same ids (ids chain as Mooncake's do); and a block two
    prompts share is whole in both (a partial one holds different tokens after it)."""
    before: dict[int, tuple[int, ...]] = {}
    holders: dict[int, list[int]] = {}
    for job in prefills(jobs):
        assert job.block_tokens == preset.tokens(BLOCK_TOKENS)
        assert len(job.prefix_blocks) == prompt_blocks(job.q_len, job.block_tokens)
        for i, block in enumerate(job.prefix_blocks):
            assert before.setdefault(block, job.prefix_blocks[:i]) == job.prefix_blocks[:i]
            holders.setdefault(block, []).append(job.q_len)
        AttentionJob(**asdict(job))  # validates again from plain fields
    block_tokens = preset.tokens(BLOCK_TOKENS)
    for block, q_lens in holders.items():
        if len(q_lens) > 1:
            assert (len(before[block]) + 1) * block_tokens <= min(q_lens)


def test_off_adds_no_prefix_fields_and_on_changes_only_prefill_prompts() -> None:
    mix = {"prefill": 0.45, "decode": 0.45, "train": 0.1}
    off, on = jobs_of(None, mix=mix), jobs_of(SharedPrefix(), mix=mix)
    assert all(j.prefix_blocks == () and j.block_tokens == 0 for j in off)
    assert len(prefills(off)) > 50
    for a, b in zip(off, on, strict=True):
        if a.kind is JobKind.PREFILL:  # a longer prompt; the rest is drawn as before
            assert b.prefix_blocks and b.q_len == b.kv_len > a.q_len
            assert replace(b, q_len=a.q_len, kv_len=a.kv_len, prefix_blocks=(),
                           block_tokens=0) == a
        else:
            assert b == a


def test_the_same_seed_gives_the_same_jobs_across_chunks(monkeypatch) -> None:
    """Conversations carry over chunk boundaries; the jobs depend only on the seed."""
    monkeypatch.setattr(synth, "CHUNK", 37)
    spec = SharedPrefix(system_prompts=3, followup_fraction=0.6)
    a = jobs_of(spec, seed=5)
    assert a == jobs_of(spec, seed=5)
    other = jobs_of(spec, seed=6)
    assert [j.prefix_blocks for j in a] != [j.prefix_blocks for j in other]
    assert not {b for j in a for b in j.prefix_blocks} & {b for j in other
                                                          for b in j.prefix_blocks}
    check_chained(a, TINY)
    assert later_turns(a, 4) > 20


def test_requests_sharing_a_system_prompt_share_its_leading_blocks() -> None:
    jobs = prefills(jobs_of(SharedPrefix(system_prompts=3, system_prompt_tokens=1600,
                                         followup_fraction=0.0)))
    whole = 1600 // BLOCK_TOKENS
    heads = {j.prefix_blocks[:whole] for j in jobs}
    assert len(heads) == 3  # each prompt in use, Zipf-weighted
    assert len({j.prefix_blocks[0] for j in jobs}) == 3
    assert all(j.q_len > 1600 for j in jobs)  # something left to compute after it
    tails = [j.prefix_blocks[whole:] for j in jobs]
    assert len({b for t in tails for b in t}) == sum(map(len, tails))  # the rest unshared
    assert later_turns(jobs, whole) == 0  # no follow-ups asked for


def test_later_turns_extend_an_earlier_prompt() -> None:
    jobs = jobs_of(SharedPrefix(system_prompts=0, followup_fraction=0.7))
    assert later_turns(jobs, 0) > 60
    firsts = [j.prefix_blocks[0] for j in prefills(jobs)]
    assert len(set(firsts)) < len(firsts) / 2  # turns of a conversation open alike
    check_chained(jobs, TINY)


@pytest.mark.parametrize("scale", [1.0, 0.05, 0.003])
def test_a_system_prompt_spans_its_whole_blocks_at_any_token_scale(scale: float) -> None:
    preset = TINY.scaled(scale) if scale != 1.0 else TINY
    jobs = prefills(jobs_of(SharedPrefix(system_prompts=1, system_prompt_tokens=2048,
                                         followup_fraction=0.3), preset=preset))
    check_chained(jobs, preset)
    assert len({j.prefix_blocks[:4] for j in jobs}) == 1
    assert len({j.prefix_blocks[4] for j in jobs}) > 1  # the fifth block is the user's
    assert all(j.q_len > 4 * j.block_tokens for j in jobs)
    assert min(len(j.prefix_blocks) for j in jobs) >= 5


@settings(deadline=None, max_examples=40)
@given(seed=st.integers(0, 2**63 - 1), prompts=st.integers(0, 5),
       tokens=st.integers(BLOCK_TOKENS, 4096), followup=st.floats(0, 1),
       scale=st.sampled_from([1.0, 0.5, 0.01, 1e-6]),
       model=st.sampled_from(["tiny", "llama3-8b"]))
def test_any_options_give_valid_chained_jobs(seed: int, prompts: int, tokens: int,
                                             followup: float, scale: float,
                                             model: str) -> None:
    preset = get_preset(model, scale)
    prefix = SharedPrefix(system_prompts=prompts, system_prompt_tokens=tokens,
                          followup_fraction=followup)
    jobs = jobs_of(prefix, jobs=120, seed=seed, preset=preset)
    check_chained(jobs, preset)
    whole = tokens // BLOCK_TOKENS
    for job in prefills(jobs):
        if prompts:
            assert job.q_len > max(preset.tokens(tokens), whole * job.block_tokens)
    assert len({j.prefix_blocks[:whole] for j in prefills(jobs) if prompts}) <= prompts


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_canonical_formats_round_trip_the_blocks(tmp_path, suffix: str) -> None:
    jobs = jobs_of(SharedPrefix(), jobs=200, seed=3)
    path = tmp_path / f"t{suffix}"
    assert write_trace(jobs, path) == 200
    assert list(open_trace(path).jobs()) == jobs


def test_a_generated_trace_hits_the_cache_in_a_simulation(cli, tmp_path, repo) -> None:
    trace, out = tmp_path / "t.parquet", tmp_path / "run"
    code, _, err = cli("trace", "generate", "-o", trace, "--jobs", "300", "--seed", "1",
                       "--rate", "12", "--model", "tiny", "--shared-prefix")
    assert code == 0, err
    read = [j for j in open_trace(trace).jobs() if isinstance(j, AttentionJob)]
    assert sum(bool(j.prefix_blocks) for j in read) > 100
    code, _, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml", "--policy",
                       "greedy", "--out", out)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["cache_hit_rate"] > 0


@pytest.mark.parametrize(("extra", "option"), [
    (["--system-prompts", "2"], "--system-prompts"),  # without --shared-prefix
    (["--followup-fraction", "0.2"], "--followup-fraction"),
    (["--shared-prefix", "--system-prompts", "-1"], "--system-prompts"),
    (["--shared-prefix", "--system-prompts", "many"], "--system-prompts"),
    (["--shared-prefix", "--system-prompt-tokens", "511"], "--system-prompt-tokens"),
    (["--shared-prefix", "--system-prompt-tokens", "16385"], "--system-prompt-tokens"),
    (["--shared-prefix", "--followup-fraction", "1.5"], "--followup-fraction"),
    (["--shared-prefix", "--followup-fraction", "nan"], "--followup-fraction"),
    (["--shared-prefix", "--system-prompts", "0", "--system-prompt-tokens", "1024"],
     "--system-prompt-tokens"),  # a length for system prompts it was told not to make
    (["--shared-prefix", "--mix", "decode=1"], "--mix"),  # no prefill to give blocks to
])
def test_bad_prefix_options_exit_2_naming_the_option(cli, tmp_path, extra, option) -> None:
    out = tmp_path / "x.jsonl"
    code, _, err = cli("trace", "generate", "-o", out, "--jobs", "3", *extra)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("attnsched: error:") and option in err
    assert not out.exists()
