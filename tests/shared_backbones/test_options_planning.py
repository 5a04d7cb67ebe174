"""The shared command-line layer: typed numbers, durations, devices, the output planner, bounded zip reading."""

from __future__ import annotations

import argparse
import math
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_backbones import archives
from shared_backbones.cliutil import lightning_device
from shared_backbones.errors import InputError, OutputExistsError
from shared_backbones.options import (
    INT_LIMIT,
    Number,
    duration_seconds,
    fraction,
    parse_device,
    parse_duration,
    positive_float,
    positive_int,
)
from shared_backbones.planning import Job, Writer, drop_own_outputs, plan_outputs, suffix_of
from shared_backbones.precision import PrecisionPolicy, resolve_device


# ------------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e400", "", "abc", "0x10"])
def test_numbers_refuse_non_finite_and_non_numbers(text):
    for t in (positive_float, fraction, Number(float)):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a number"):
            t(text)


def test_number_bounds_open_and_closed():
    assert fraction("0") == 0.0 and fraction("0.999") == 0.999
    with pytest.raises(argparse.ArgumentTypeError, match=r"in \[0, 1\)"):
        fraction("1")
    with pytest.raises(argparse.ArgumentTypeError, match="> 0"):
        positive_float("0")
    assert positive_int("1") == 1 and positive_int("+7") == 7
    for bad in ("0", "-3", "1.5", "1e3", str(INT_LIMIT + 1)):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
            positive_int(bad)
    auto = Number(int, min=1, max=8, special={"auto": "auto"})
    assert auto("auto") == "auto" and auto("8") == 8
    assert "or auto" in auto.describe()


@settings(max_examples=200, deadline=None)
@given(lo=st.one_of(st.none(), st.floats(-1e6, 1e6)), width=st.floats(0, 1e6), lo_open=st.booleans(),
       hi_open=st.booleans(), value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers()))
def test_a_number_type_accepts_exactly_its_declared_range(lo, width, lo_open, hi_open, value):
    hi = None if lo is None else lo + width
    t = Number(float, min=lo, max=hi, min_open=lo_open, max_open=hi_open)
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        got = t(text)
    except argparse.ArgumentTypeError:
        v = float(text) if text not in ("nan", "inf", "-inf") else float(text)
        inside = math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo)) and \
            (hi is None or (v < hi if hi_open else v <= hi))
        assert not inside, f"{text} refused although inside {t.describe()}"
    else:
        assert t.contains(got) and math.isfinite(got)


# ------------------------------------------------------------------------------------------------ durations
@pytest.mark.parametrize("text,seconds", [
    ("90s", 90), ("90", 90), ("45m", 2700), ("45 min", 2700), ("2h", 7200), ("1.5h", 5400), ("3d", 259200),
    ("2 days", 172800), ("00:12:00:00", 43200), ("01:30:00", 5400), ("05:00", 300), ("8 minutes", 480),
])
def test_one_duration_syntax(text, seconds):
    assert parse_duration(text) == seconds
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0s", "-1h", "nan", "inf", "2 weeks", "1:2:3:4:5", "h", "", "1e9d", "1:xx"])
def test_bad_durations_are_usage_errors(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_duration_of_library_values():
    assert duration_seconds(None) is None and duration_seconds({"hours": 2}) == 7200 and duration_seconds(30) == 30
    with pytest.raises(InputError, match="--max-time"):
        duration_seconds(float("nan"))


# ------------------------------------------------------------------------------------------------ devices
def test_device_spellings():
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert parse_device(ok) == ok
    for bad in ("gpu", "cuda:x", "mps:0", "tpu", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_device(bad)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_is_offered_and_refused_in_one_line_where_absent():
    with pytest.raises(InputError, match="--device mps: Apple's Metal") as exc:
        resolve_device("mps")
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="--device mps"):
        lightning_device("mps")
    assert resolve_device("auto").type in ("cpu", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_refused_in_one_line_without_a_gpu():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device(name)
        with pytest.raises(InputError, match="no CUDA GPU"):
            lightning_device(name, 2)


def test_precision_policy_on_mps():
    mps = torch.device("mps")
    assert PrecisionPolicy.resolve("auto", mps).name == "fp32"
    assert PrecisionPolicy.resolve("fp16", mps).name == "fp16"
    with pytest.raises(InputError, match="bf16"):
        PrecisionPolicy.resolve("bf16", mps)


# ------------------------------------------------------------------------------------------------ planner
def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _listing(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _sep_jobs(files: list[Path], out: Path | None = None) -> list[Job]:
    def outs(f: Path) -> dict[str, Path]:
        folder = out or f.parent
        return {f"s{k}": folder / f"{f.stem}_s{k}.wav" for k in (1, 2)}

    return [Job(f.name, [f], outs(f)) for f in files]


def test_two_inputs_to_one_output_refused_even_with_overwrite(tmp_path):
    files = [_touch(tmp_path / "in" / "a.flac"), _touch(tmp_path / "in" / "a.wav")]
    before = _listing(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(InputError, match=r"two inputs map to this output: a.flac and a.wav") as exc:
            plan_outputs(_sep_jobs(files, tmp_path / "out"), overwrite=overwrite, folders=[tmp_path / "out"])
        assert "a_s1.wav" in str(exc.value)
    assert _listing(tmp_path) == before and not (tmp_path / "out").exists()


def test_two_outputs_of_one_run_with_one_path(tmp_path):
    src = _touch(tmp_path / "ct.nii.gz")
    job = Job("ct", [src], {"labels": tmp_path / "x.nii.gz", "dicom_seg": tmp_path / "x.nii.gz"})
    with pytest.raises(InputError, match=r"two outputs of this run have the same path \(labels and dicom seg\)"):
        plan_outputs([job], overwrite=True)
    job = Job("ct", [src], {"labels": tmp_path / "x.nii.gz"})
    with pytest.raises(InputError, match="same path"):
        plan_outputs([job], shared={"stats": tmp_path / "sub" / ".." / "x.nii.gz"}, overwrite=True)


def test_output_among_the_files_of_an_input(tmp_path):
    series = [_touch(tmp_path / "S" / f"IM{i:04d}.dcm") for i in range(3)]
    job = Job("S", series, {"labels": tmp_path / "S_seg.nii.gz", "dicom_seg": tmp_path / "S" / "IM0001.dcm"})
    with pytest.raises(InputError, match="dicom seg output is one of the inputs"):
        plan_outputs([job], overwrite=True)
    model = _touch(tmp_path / "model.pt")
    job = Job("S", series, {"labels": model})
    with pytest.raises(InputError, match="one of the inputs"):
        plan_outputs([job], other_inputs=[model], overwrite=True)
    assert (tmp_path / "S" / "IM0001.dcm").read_text() == "x"


def test_writer_refuses_an_ending_before_any_work_with_a_hint(tmp_path):
    src = _touch(tmp_path / "ct.nii.gz")
    writers = {"labels": Writer((".nii.gz", ".nii"), hints={".dcm": "use --dicom-seg for DICOM SEG"})}
    with pytest.raises(InputError, match=r"cannot write a '\.dcm' file .*use --dicom-seg for DICOM SEG"):
        plan_outputs([Job("ct", [src], {"labels": tmp_path / "seg.dcm"})], writers=writers)
    with pytest.raises(InputError, match=r"cannot write a '\.txt' file \(use \.nii\.gz, \.nii\)"):
        plan_outputs([Job("ct", [src], {"labels": tmp_path / "seg.txt"})], writers=writers)
    plan = plan_outputs([Job("ct", [src], {"labels": tmp_path / "SEG.NII.GZ"})], writers=writers)
    assert len(plan.jobs) == 1
    assert suffix_of("a/b.SAFE.zip") == ".safe.zip" and suffix_of("x") == ""


def test_existing_outputs_skip_done_and_partial(tmp_path):
    files = [_touch(tmp_path / f"{n}.wav") for n in "abc"]
    jobs = _sep_jobs(files, tmp_path / "out")
    _touch(tmp_path / "out" / "a_s1.wav"), _touch(tmp_path / "out" / "a_s2.wav")
    with pytest.raises(OutputExistsError):
        plan_outputs(jobs)
    plan = plan_outputs(jobs, skip_done=True)
    assert [j.name for j in plan.jobs] == ["b.wav", "c.wav"] and [j.name for j in plan.skipped] == ["a.wav"]
    assert "skipping 1 input(s)" in plan.skipped_notice()
    assert len(plan_outputs(jobs, skip_done=True, overwrite=True).jobs) == 3
    (tmp_path / "out" / "a_s2.wav").unlink()
    with pytest.raises(InputError, match="some outputs exist and others do not"):
        plan_outputs(jobs, skip_done=True)


def test_parts_cover_the_batch_once_and_every_part_checks_everything(tmp_path):
    files = [_touch(tmp_path / f"f{i}.wav") for i in range(7)]
    jobs = _sep_jobs(files, tmp_path / "out")
    parts = [plan_outputs(jobs, num_parts=3, part_id=k) for k in range(3)]
    names = [j.name for p in parts for j in p.jobs]
    assert sorted(names) == sorted(j.name for j in jobs) and all(p.total == 7 for p in parts)
    clash = jobs + _sep_jobs([_touch(tmp_path / "f0.flac")], tmp_path / "out")
    for k in range(3):  # a collision in another part's share is refused by every part
        with pytest.raises(InputError, match="two inputs"):
            plan_outputs(clash, num_parts=3, part_id=k)
    with pytest.raises(InputError, match=r"--part-id must be in 0\.\.2"):
        plan_outputs(jobs, num_parts=3, part_id=3)


def test_output_folder_under_a_file_is_refused(tmp_path):
    src = _touch(tmp_path / "a.wav")
    blocker = _touch(tmp_path / "block")
    with pytest.raises(InputError, match="a parent path is a file"):
        plan_outputs(_sep_jobs([src], blocker / "out"))
    with pytest.raises(InputError, match="output must be a folder"):
        plan_outputs([], folders=[blocker])


def test_precheck_runs_before_any_work(tmp_path):
    src = _touch(tmp_path / "a.wav")
    seen = []

    def precheck(job):
        seen.append(job.name)
        raise InputError("series has no FrameOfReferenceUID", job.inputs[0])

    with pytest.raises(InputError, match="FrameOfReferenceUID"):
        plan_outputs(_sep_jobs([src], tmp_path / "o"), precheck=precheck).make_folders()
    assert seen == ["a.wav"] and not (tmp_path / "o").exists()


def test_drop_own_outputs_of_a_folder():
    cands = [Path("f/meeting.wav"), Path("f/meeting_s1.wav"), Path("f/meeting_s2.wav"), Path("f/talk.flac")]
    keep, skipped = drop_own_outputs(cands, lambda p: [p.with_name(f"{p.stem}_s{k}.wav") for k in (1, 2)])
    assert keep == [Path("f/meeting.wav"), Path("f/talk.flac")]
    assert skipped == [Path("f/meeting_s1.wav"), Path("f/meeting_s2.wav")]


_STEMS = st.sampled_from(["a", "b", "a_s1", "c"])
_EXTS = st.sampled_from([".wav", ".flac", ".WAV"])


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.tuples(st.sampled_from(["d1", "d2"]), _STEMS, _EXTS), min_size=1, max_size=6,
                      unique=True), shared_out=st.booleans(), overwrite=st.booleans())
def test_generated_input_sets_refused_exactly_when_outputs_collide(tmp_path_factory, names, shared_out, overwrite):
    root = tmp_path_factory.mktemp("gen")
    files = [_touch(root / d / f"{s}{e}") for d, s, e in names]
    out = root / "out" if shared_out else None
    jobs = _sep_jobs(files, out)
    targets = [str(p.resolve()) for j in jobs for p in j.output_paths()]
    sources = {str(f.resolve()) for f in files}
    collide = len(set(targets)) < len(targets) or bool(set(targets) & sources)
    before = _listing(root)
    try:
        plan = plan_outputs(jobs, overwrite=overwrite, folders=[out] if out else [])
    except InputError:
        assert collide
    else:
        assert not collide and len(plan.jobs) == len(jobs)
    assert _listing(root) == before  # planning writes nothing, refused or not


# ------------------------------------------------------------------------------------------------ archives
def _zip_with(path: Path, members: dict[str, bytes | int]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            if isinstance(data, int):  # that many zero bytes, streamed in (the zip stays tiny)
                with z.open(name, "w", force_zip64=True) as fh:
                    block = bytes(1 << 20)
                    for _ in range(data >> 20):
                        fh.write(block)
            else:
                z.writestr(name, data)
    return path


def test_read_member_is_bounded_per_kind(tmp_path, monkeypatch):
    zpath = _zip_with(tmp_path / "p.zip", {"small.xml": b"<a/>", "big.xml": 8 << 20})
    monkeypatch.setitem(archives.LIMITS, "metadata", 4 << 20)
    with archives.open_zip(zpath) as z:
        assert archives.read_member(z, "small.xml", "metadata") == b"<a/>"
        assert archives.read_head(z, "big.xml", 16) == bytes(16)
        tracemalloc.start()
        with pytest.raises(InputError, match=r"zip member big.xml inflates to 8 MiB, more than a metadata member "
                                             r"may hold \(4 MiB\); refused"):
            archives.read_member(z, "big.xml", "metadata")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 1 << 20
    with pytest.raises(InputError, match="not a readable zip archive"):
        archives.open_zip(_touch(tmp_path / "x.zip", "not a zip"))


def test_dicom_zip_with_a_huge_non_dicom_member_is_not_inflated(tmp_path):
    """A DICOM zip with a 256 MiB member of zeros: listing reads its header through a stream, not the member."""
    from medseg.dicom import _Source

    zpath = _zip_with(tmp_path / "series.zip", {"README.txt": b"hello", "zeros.bin": 256 << 20})
    assert zpath.stat().st_size < 2 << 20
    src = _Source(zpath)
    tracemalloc.start()
    try:
        assert src.read("zeros.bin", pixels=False) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        src.close()
    assert peak < 8 << 20, f"peak {peak / 2**20:.0f} MiB while classifying a zeros member"

