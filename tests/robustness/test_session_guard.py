"""Issue 7, case 7: the session guard in conftest.py sees files that appear, vanish or change."""
from helpers.session_guard import differences, snapshot


def test_guard_reports_new_changed_and_removed_files(tmp_path):
    (tmp_path / 'kept.txt').write_text('a')
    (tmp_path / 'edited.txt').write_text('a')
    (tmp_path / 'tracked.txt').write_text('a')
    (tmp_path / 'gone.txt').write_text('a')
    (tmp_path / '__pycache__').mkdir()
    before = snapshot(str(tmp_path))
    (tmp_path / 'edited.txt').write_text('bb')
    (tmp_path / 'tracked.txt').write_text('bb')
    (tmp_path / 'gone.txt').unlink()
    (tmp_path / 'work_dirs' / 'x').mkdir(parents=True)
    (tmp_path / 'work_dirs' / 'x' / 'latest.pth').write_bytes(b'')
    (tmp_path / '__pycache__' / 'm.pyc').write_bytes(b'')
    found = differences(before, snapshot(str(tmp_path)), tracked={'tracked.txt'})
    assert found == ['new: work_dirs/x/latest.pth', 'changed: edited.txt', 'removed: gone.txt']
