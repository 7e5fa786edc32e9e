from conftest import World
E = "p4@example.com"
def test_tags(tmp_path):
    w = World(tmp_path)
    w.ingest([{"email": E, "name": "Ann", "tags": [], "lists": ["news"]}])
    assert w.cycle().outcome == "converged"
    w.emu.set_tags(E, ["b", "c"]); w.emu.unsubscribe(E, w.list_id)
    print(1, w.cycle().summary()["pulled"], w.local().get(E))
    w.ingest([{"email": E, "delete": 1}])
    r = w.cycle(); print(2, r.outcome, r.summary(), w.local().get(E), w.remote().get(E, {}).get("tags"))
    w.ingest([{"email": E, "status": "active"}])
    w.ingest([{"email": E, "name": "Ann", "city": "", "tags": [], "lists": ["news"]}])
    r = w.cycle()
    print(3, r.outcome, r.summary(), r.calls)
    print(w.remote().get(E), w.local().get(E))
    assert sorted(w.remote()[E]["tags"]) == sorted(w.local()[E]["tags"])
