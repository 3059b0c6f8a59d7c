import os

import pytest

from memlaw.atomic import atomic_write_dir, atomic_write_json, atomic_write_text


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_files_and_folders_get_the_usual_permissions(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask()
    atomic_write_dir(tmp_path / "d", lambda p: (p / "f").write_text("y"), overwrite=False)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask()


def test_failed_writes_leave_the_old_content_and_no_debris(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"a": 1})

    def explode(staging):
        (staging / "partial").write_text("half")
        raise RuntimeError("interrupted")

    atomic_write_dir(tmp_path / "d", lambda p: (p / "f").write_text("old"), overwrite=False)
    with pytest.raises(RuntimeError):
        atomic_write_dir(tmp_path / "d", explode, overwrite=True)
    assert (tmp_path / "d" / "f").read_text() == "old"
    with pytest.raises(FileExistsError):
        atomic_write_dir(tmp_path / "d", lambda p: None, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "r.json"]
