"""Lesson library: persistence across processes, ops log replay, concurrent writers (threads and processes)."""
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor

from agentrl.memory.library import LessonLibrary, Op


def test_add_update_delete_and_log(tmp_path):
    lib = LessonLibrary(str(tmp_path / "m.sqlite"))
    a = lib.add("Check units first.", step=1, source_tasks=["t1"])
    b = lib.add("Search the entity name.", step=1)
    res = lib.apply([Op("UPDATE", a, "Check the units before computing.", ("t2",)), Op("DELETE", b),
                     Op("UPDATE", 999, "ghost"), Op("DELETE", 998)], step=2)
    assert res.updated == [a] and res.deleted == [b] and len(res.skipped) == 2
    (lesson,) = lib.lessons()
    assert lesson.text == "Check the units before computing." and lesson.source_tasks == ("t1", "t2")
    assert (lesson.created_step, lesson.updated_step) == (1, 2)
    assert [o["op"] for o in lib.ops_log()] == ["ADD", "ADD", "UPDATE", "DELETE"]
    assert lib.version() == 4


def test_reconstruct_any_step(tmp_path):
    lib = LessonLibrary(str(tmp_path / "m.sqlite"))
    a = lib.add("one", step=1)
    lib.add("two", step=1)
    lib.apply([Op("UPDATE", a, "one, better")], step=2)
    lib.apply([Op("DELETE", a), Op("ADD", text="three")], step=3)
    assert [x.text for x in lib.at_step(0)] == []
    assert [x.text for x in lib.at_step(1)] == ["one", "two"]
    assert [x.text for x in lib.at_step(2)] == ["one, better", "two"]
    assert [x.text for x in lib.at_step(3)] == ["two", "three"]
    assert [(x.id, x.text) for x in lib.at_step(3)] == [(x.id, x.text) for x in lib.lessons()]


def test_persists_across_process_restart(tmp_path):
    path = str(tmp_path / "m.sqlite")
    code = ("import sys; from agentrl.memory.library import LessonLibrary; "
            "lib = LessonLibrary(sys.argv[1]); lib.add('written by another process', step=5, source_tasks=['x'])")
    subprocess.run([sys.executable, "-c", code, path], check=True)
    lib = LessonLibrary(path)
    (lesson,) = lib.lessons()
    assert lesson.text == "written by another process" and lesson.created_step == 5
    lib.record_injection([lesson.id], 1.0)
    lib.record_injection([lesson.id], 0.0)
    code2 = ("import sys; from agentrl.memory.library import LessonLibrary; "
             "l = LessonLibrary(sys.argv[1]).lessons()[0]; print(l.n_injected, l.reward_sum)")
    out = subprocess.run([sys.executable, "-c", code2, path], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["2", "1.0"]


def test_concurrent_threads(tmp_path):
    lib = LessonLibrary(str(tmp_path / "m.sqlite"))
    target = lib.add("shared", step=0)

    def work(k):
        mine = LessonLibrary(lib.path)
        for i in range(10):
            mine.add(f"thread {k} lesson {i}", step=i)
            mine.record_injection([target], 1.0)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lib) == 61
    assert lib.lessons()[0].n_injected == 60  # no lost update
    assert len(lib.ops_log()) == 61


def _proc_writer(args):
    path, k = args
    lib = LessonLibrary(path)
    for i in range(8):
        lib.apply([Op("ADD", text=f"proc {k} #{i}"), Op("ADD", text=f"proc {k} #{i} twin")], step=i)
        lib.record_injection([1], 0.5)
    return k


def test_concurrent_processes(tmp_path):
    path = str(tmp_path / "m.sqlite")
    LessonLibrary(path).add("first", step=0)
    with ProcessPoolExecutor(4) as pool:
        assert sorted(pool.map(_proc_writer, [(path, k) for k in range(4)])) == [0, 1, 2, 3]
    lib = LessonLibrary(path)
    assert len(lib) == 1 + 4 * 8 * 2
    assert lib.lessons()[0].n_injected == 32 and abs(lib.lessons()[0].reward_sum - 16.0) < 1e-9
    log = lib.ops_log()
    assert len(log) == 65 and len({o["lesson_id"] for o in log}) == 65
    # each apply() is one transaction: a process's two ADDs of one call are adjacent in the log
    for i in range(1, len(log), 2):
        assert log[i + 1]["text"] == log[i]["text"] + " twin"
