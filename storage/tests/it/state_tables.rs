//! The state tables: one batch per entry, reads, indexes, snapshot
//! export / install, and the snapshot file.

use bizra_crypto::{Attestation, BlockHeader, Hash};
use bizra_storage::{
    HeadRef, MembershipOf, NewBlock, SnapshotMetaOf, StateTables, StateUpdate, StorageError, Store,
};

use crate::log_id;

fn att(attester: u8, poi: u8, n: u64) -> (Hash, Attestation) {
    let a = Attestation {
        attester: [attester; 32],
        poi_hash: [poi; 32],
        timestamp_ms: 1_795_000_000_000 + n,
        ahsan_score: 9_750,
        context: format!("ctx {n}"),
        signature: [n as u8; 64],
    };
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    (id, a)
}

fn block(height: u64, parent: Hash, atts: Vec<(Hash, Attestation)>) -> NewBlock {
    let header = BlockHeader {
        chain_id: [9; 32],
        height,
        parent_hash: parent,
        attestations_root: [height as u8; 32],
        attestation_count: atts.len() as u32,
        proposed_at_ms: 1_795_000_000_000,
        proposer: [5; 32],
        raft_term: 1,
        raft_index: height + 10,
    };
    NewBlock {
        hash: header.hash(),
        header,
        attestations: atts,
    }
}

/// The tables of a new store in a temp dir (kept alive by the caller).
fn fresh_tables() -> (tempfile::TempDir, StateTables) {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let tables = Store::open(dir.path())
        .expect("a fresh store opens")
        .state();
    (dir, tables)
}

/// Two blocks: attester 1 has ids 1, 2 (block 1) and 4 (block 2).
fn fill(tables: &StateTables) -> (NewBlock, NewBlock) {
    let b1 = block(1, [0; 32], vec![att(1, 7, 1), att(1, 8, 2), att(2, 7, 3)]);
    let b2 = block(2, b1.hash, vec![att(1, 7, 4)]);
    tables
        .commit(StateUpdate {
            applied: log_id(1, 11),
            membership: None,
            block: Some(b1.clone()),
        })
        .expect("commit block 1");
    tables
        .commit(StateUpdate {
            applied: log_id(1, 12),
            membership: None,
            block: Some(b2.clone()),
        })
        .expect("commit block 2");
    (b1, b2)
}

#[test]
fn committed_blocks_are_readable_by_every_key() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = Store::open(dir.path()).expect("a fresh store opens");
    let tables = store.state();
    assert_eq!(tables.head().expect("read"), None);
    assert_eq!(tables.applied_state().expect("read").0, None);
    let (b1, b2) = fill(&tables);

    let head = tables
        .head()
        .expect("read")
        .expect("a head after two blocks");
    assert_eq!(head.hash, b2.hash);
    assert_eq!(
        tables.head_ref().expect("read"),
        Some(HeadRef {
            height: 2,
            hash: b2.hash
        })
    );
    let by_hash = tables
        .block_by_hash(&b1.hash)
        .expect("read")
        .expect("block 1 by hash");
    assert_eq!(by_hash.header, b1.header);
    assert_eq!(
        by_hash.ids,
        b1.attestations
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>()
    );

    let (id3, a3) = att(2, 7, 3);
    let stored = tables
        .attestation(&id3)
        .expect("read")
        .expect("id 3 stored");
    assert_eq!(stored.attestation, a3);
    assert_eq!(
        (stored.height, stored.index, stored.block_hash),
        (1, 2, b1.hash)
    );
    assert_eq!(tables.applied_state().expect("read").0, Some(log_id(1, 12)));

    let page = tables.by_attester(&[1; 32], None, 2).expect("read");
    assert_eq!(
        page.iter().map(|e| (e.height, e.index)).collect::<Vec<_>>(),
        vec![(1, 0), (1, 1)]
    );
    let rest = tables
        .by_attester(&[1; 32], Some((1, 1)), 10)
        .expect("read");
    assert_eq!(
        rest.iter()
            .map(|e| (e.height, e.index, e.id[7]))
            .collect::<Vec<_>>(),
        vec![(2, 0, 4)]
    );
    let poi = tables.by_poi_hash(&[7; 32], None, 10).expect("read");
    assert_eq!(
        poi.iter().map(|e| e.id[7]).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    assert!(tables
        .by_attester(&[3; 32], None, 10)
        .expect("read")
        .is_empty());
}

#[test]
fn export_then_install_reproduces_the_tables_and_replaces_old_ones() {
    let (_dir_a, a) = fresh_tables();
    let (_dir_b, b) = fresh_tables();
    let (b1, b2) = fill(&a);
    // B has unrelated state that the install must remove.
    let stale = block(1, [0; 32], vec![att(3, 3, 99)]);
    b.commit(StateUpdate {
        applied: log_id(1, 5),
        membership: None,
        block: Some(stale.clone()),
    })
    .expect("commit");

    let data = a.export().expect("export");
    let membership = MembershipOf::default();
    let parsed = StateTables::parse_snapshot(&data).expect("own export parses");
    b.install(parsed, Some(log_id(1, 12)), &membership)
        .expect("install");

    assert_eq!(b.head().expect("read"), a.head().expect("read"));
    assert_eq!(b.block(1).expect("read").map(|s| s.hash), Some(b1.hash));
    assert_eq!(b.block(2).expect("read").map(|s| s.hash), Some(b2.hash));
    assert_eq!(b.block_by_hash(&stale.hash).expect("read"), None);
    assert_eq!(b.attestation(&att(3, 3, 99).0).expect("read"), None);
    assert_eq!(b.applied_state().expect("read").0, Some(log_id(1, 12)));
    assert_eq!(b.export().expect("export"), data);
}

#[test]
fn damaged_snapshot_data_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let tables = Store::open(dir.path())
        .expect("a fresh store opens")
        .state();
    fill(&tables);
    let data = tables.export().expect("export");
    // One more chunk with one pair than the header announces.
    let extra: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"Mhead".to_vec(), vec![0])];
    let extra = bizra_crypto::codec::encode(&extra).expect("plain data encodes");
    let extra_frame = [&(extra.len() as u32).to_be_bytes()[..], &extra[..]].concat();
    for bad in [
        Vec::new(),
        data[..data.len() - 1].to_vec(),
        [&data[..], &[0, 0, 0][..]].concat(),
        [&data[..], &extra_frame[..]].concat(),
    ] {
        assert!(
            matches!(
                StateTables::parse_snapshot(&bad),
                Err(StorageError::InvalidSnapshot(_)) | Err(StorageError::Codec { .. })
            ),
            "accepted {} bytes of damaged data",
            bad.len()
        );
    }
}

/// `u32 BE length ‖ bytes`: one frame of snapshot data.
fn frame(bytes: &[u8]) -> Vec<u8> {
    [&(bytes.len() as u32).to_be_bytes()[..], bytes].concat()
}

/// The frames of snapshot data with this header and these chunks (the
/// header is a struct of two fields, which the codec writes as a tuple).
fn snapshot_data(format: u32, pairs: u64, chunks: &[Vec<(Vec<u8>, Vec<u8>)>]) -> Vec<u8> {
    let mut out = frame(&encode(&(format, pairs)));
    for chunk in chunks {
        out.extend(frame(&encode(chunk)));
    }
    out
}

/// Tables filled with one block of `n` attestations.
fn filled_tables(n: u64) -> (tempfile::TempDir, StateTables) {
    let (dir, tables) = fresh_tables();
    let b1 = block(
        1,
        [0; 32],
        (0..n)
            .map(|i| att((i % 250) as u8, (i % 7) as u8, i))
            .collect(),
    );
    tables
        .commit(StateUpdate {
            applied: log_id(1, 11),
            membership: None,
            block: Some(b1),
        })
        .expect("commit");
    (dir, tables)
}

#[test]
fn the_streamed_check_refuses_what_parse_refuses_and_changes_nothing() {
    let (_dir, source) = filled_tables(6000);
    let data = source.export().expect("export");
    let first_frame_len = 4 + u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
    let (_dir_b, b) = filled_tables(3);
    let before = b.export().expect("export");
    let id = |n: u8| [&b"A"[..], &[n; 32][..]].concat();
    let head = || {
        (
            b"Mhead".to_vec(),
            encode(&HeadRef {
                height: 1,
                hash: [1; 32],
            }),
        )
    };
    let good_chunk = vec![(id(1), vec![1, 2, 3]), head()];
    // The good shape, hand-made, is accepted: the cases below differ from
    // it by one thing each.
    let ok = snapshot_data(1, 2, std::slice::from_ref(&good_chunk));
    assert_eq!(
        StateTables::check_snapshot(&mut &ok[..], std::path::Path::new("ok")).expect("good"),
        2
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("cut in the last frame", data[..data.len() - 1].to_vec()),
        ("cut in the header", data[..first_frame_len - 1].to_vec()),
        ("a cut frame length", [&data[..], &[0, 0, 0][..]].concat()),
        (
            "a frame length past the limit",
            [
                &data[..first_frame_len],
                &u32::MAX.to_be_bytes()[..],
                &[0; 64][..],
            ]
            .concat(),
        ),
        (
            "a frame length past the end",
            [
                &data[..first_frame_len],
                &(60u32 << 20).to_be_bytes()[..],
                &[0; 64][..],
            ]
            .concat(),
        ),
        (
            "another format",
            snapshot_data(2, 2, std::slice::from_ref(&good_chunk)),
        ),
        (
            "more pairs than announced",
            snapshot_data(1, 1, std::slice::from_ref(&good_chunk)),
        ),
        (
            "fewer pairs than announced",
            snapshot_data(1, 3, std::slice::from_ref(&good_chunk)),
        ),
        (
            "one chunk more than announced",
            [&data[..], &frame(&encode(&vec![head()]))[..]].concat(),
        ),
        ("the last frame missing", {
            let mut at = 0;
            let mut last = 0;
            while at < data.len() {
                last = at;
                at += 4 + u32::from_be_bytes(data[at..at + 4].try_into().expect("4")) as usize;
            }
            data[..last].to_vec()
        }),
        (
            "a header that does not decode",
            [frame(&[0xff; 3]), frame(&encode(&good_chunk))].concat(),
        ),
        (
            "a chunk that does not decode",
            snapshot_data(1, 2, &[])
                .into_iter()
                .chain(frame(&[0xff; 9]))
                .collect(),
        ),
        (
            "a key of no table",
            snapshot_data(1, 2, &[vec![(b"Xkey".to_vec(), vec![1]), head()]]),
        ),
        (
            "a key of the wrong length",
            snapshot_data(1, 2, &[vec![(id(1)[..20].to_vec(), vec![1]), head()]]),
        ),
        (
            "the applied id in the data",
            snapshot_data(
                1,
                2,
                &[vec![(id(1), vec![1]), (b"Mapplied".to_vec(), vec![0])]],
            ),
        ),
        (
            "a head that does not decode",
            snapshot_data(
                1,
                2,
                &[vec![(id(1), vec![1]), (b"Mhead".to_vec(), vec![1])]],
            ),
        ),
    ];
    for (what, bad) in cases {
        let parsed = StateTables::parse_snapshot(&bad)
            .map(|_| ())
            .expect_err(what);
        let checked = StateTables::check_snapshot(&mut &bad[..], std::path::Path::new("bad"))
            .expect_err(what);
        assert!(
            matches!(
                checked,
                StorageError::InvalidSnapshot(_) | StorageError::Codec { .. }
            ),
            "{what}: {checked}"
        );
        // The same check, whether the data is in memory or read.
        assert_eq!(parsed.to_string(), checked.to_string(), "{what}");
        let installed = b
            .install_from(
                &mut &bad[..],
                std::path::Path::new("bad"),
                Some(log_id(9, 99)),
                &MembershipOf::default(),
            )
            .expect_err(what);
        assert_eq!(installed.to_string(), checked.to_string(), "{what}");
        assert_eq!(
            b.export().expect("export"),
            before,
            "{what}: tables changed"
        );
        assert_eq!(b.applied_state().expect("read").0, Some(log_id(1, 11)));
    }
}

#[test]
fn a_snapshot_installed_from_a_file_equals_one_installed_from_memory() {
    let (_dir, source) = filled_tables(6000);
    let data = source.export().expect("export");
    assert!(data.len() > 2 << 20, "several frames: {} bytes", data.len());
    let mut file = tempfile::tempfile().expect("temp file");
    std::io::Write::write_all(&mut file, &data).expect("write");
    let membership = MembershipOf::default();
    let (_dir_m, from_memory) = filled_tables(5);
    let (_dir_f, from_file) = filled_tables(7);
    let parsed = StateTables::parse_snapshot(&data).expect("parses");
    from_memory
        .install(parsed, Some(log_id(2, 20)), &membership)
        .expect("install");
    std::io::Seek::rewind(&mut file).expect("rewind");
    let path = std::path::Path::new("file");
    assert_eq!(
        StateTables::check_snapshot(&mut file, path).expect("checks"),
        3 * 6000 + 3
    );
    std::io::Seek::rewind(&mut file).expect("rewind");
    let pairs = from_file
        .install_from(&mut file, path, Some(log_id(2, 20)), &membership)
        .expect("install");
    assert_eq!(pairs, 3 * 6000 + 3);
    // Every table (the export holds all but the two meta keys, compared
    // through applied_state).
    assert_eq!(from_file.export().expect("export"), data);
    assert_eq!(from_memory.export().expect("export"), data);
    assert_eq!(
        from_file.applied_state().expect("read"),
        from_memory.applied_state().expect("read")
    );
    assert_eq!(
        from_file.head().expect("read"),
        source.head().expect("read")
    );
}

#[test]
fn each_received_snapshot_gets_a_file_of_its_own_and_leaves_none_behind() {
    use std::io::{Read, Seek, Write};
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let recv = dir.path().join("snapshot.recv");
    {
        let store = Store::open(dir.path()).expect("a fresh store opens");
        let file = store.snapshot_file();
        let (mut first, path) = file.create_receive_file().expect("create");
        assert_eq!(path, recv);
        first.write_all(b"first transfer").expect("write");
        // A second transfer (the leader sent it again) does not touch the
        // first, which an install may still be reading.
        let (mut second, _) = file.create_receive_file().expect("create");
        second.write_all(b"second").expect("write");
        let mut back = String::new();
        first.rewind().expect("rewind");
        first.read_to_string(&mut back).expect("read");
        assert_eq!(back, "first transfer");
        assert!(!recv.exists(), "no name left in the directory");
    }
    // A crash between create and unlink leaves the name; open removes it.
    std::fs::write(&recv, b"partial").expect("write");
    let _store = Store::open(dir.path()).expect("reopens");
    assert!(!recv.exists());
}

#[test]
fn snapshot_file_round_trips_and_detects_damage() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let store = Store::open(dir.path()).expect("a fresh store opens");
    let file = store.snapshot_file();
    assert!(file.load().expect("no file is not an error").is_none());
    assert!(file.open_data().expect("no file is not an error").is_none());
    let meta = SnapshotMetaOf {
        last_log_id: Some(log_id(3, 30)),
        last_membership: MembershipOf::default(),
        snapshot_id: "3-30".into(),
    };
    assert!(file.save(&meta, b"state bytes").expect("save"));
    let (m, d) = file.load().expect("load").expect("saved");
    assert_eq!((m, d.as_slice()), (meta.clone(), &b"state bytes"[..]));
    assert_eq!(file.load_meta().expect("meta"), Some(meta.clone()));
    // The same data through an open handle, positioned at its start.
    let (m, mut handle, len) = file.open_data().expect("open").expect("saved");
    let mut d = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut handle, len), &mut d).expect("read");
    assert_eq!((m, d.as_slice()), (meta.clone(), &b"state bytes"[..]));
    // Written in pieces, as an export writes it: the same file.
    let bytes_before = std::fs::read(dir.path().join("snapshot.current")).expect("read");
    let newer = SnapshotMetaOf {
        last_log_id: Some(log_id(3, 31)),
        snapshot_id: "3-31".into(),
        ..meta.clone()
    };
    let (mut handle, len) = file
        .save_with(&newer, |w, path| {
            for piece in [&b"state "[..], &b"bytes"[..]] {
                w.write_all(piece)
                    .map_err(|e| StorageError::Corrupt(format!("{}: {e}", path.display())))?;
            }
            Ok(())
        })
        .expect("save")
        .expect("written");
    // The handle it returns reads the data just written.
    let mut d = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut handle, len), &mut d).expect("read");
    assert_eq!(d, b"state bytes");
    assert!(file
        .save(&meta, b"state bytes")
        .is_ok_and(|written| !written));
    assert_eq!(file.load().expect("load").expect("saved").1, b"state bytes");
    assert_ne!(
        std::fs::read(dir.path().join("snapshot.current")).expect("read"),
        bytes_before
    );
    // A failing writer leaves the stored snapshot as it was.
    let newest = SnapshotMetaOf {
        last_log_id: Some(log_id(3, 40)),
        snapshot_id: "3-40".into(),
        ..meta.clone()
    };
    assert!(file
        .save_with(&newest, |_, _| Err(StorageError::Corrupt("no".into())))
        .is_err());
    assert_eq!(
        file.load_meta().expect("meta").map(|m| m.snapshot_id),
        Some("3-31".into())
    );
    let meta = newer;

    // An older snapshot (a slow build finishing late) never replaces it.
    let older = SnapshotMetaOf {
        last_log_id: Some(log_id(3, 20)),
        snapshot_id: "3-20".into(),
        ..meta.clone()
    };
    assert!(!file.save(&older, b"old").expect("save"));
    assert_eq!(file.load().expect("load").map(|(m, _)| m), Some(meta));

    let path = dir.path().join("snapshot.current");
    let mut bytes = std::fs::read(&path).expect("the file exists");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).expect("rewrite");
    assert!(matches!(file.load(), Err(StorageError::Corrupt(_))));
    assert!(matches!(file.open_data(), Err(StorageError::Corrupt(_))));
}

/// Writes the state tables of a data-format-2 store: sled's `state` tree
/// with the last applied id and one voter-set record per height in
/// `heights`.
fn write_sled_state(dir: &std::path::Path, applied: u64, heights: std::ops::RangeInclusive<u64>) {
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .segment_size(16 << 20)
        .open()
        .expect("the sled db opens");
    let tree = db.open_tree("state").expect("tree");
    tree.insert(b"Mapplied", encode(&Some(log_id(2, applied))))
        .expect("insert");
    for h in heights {
        let change = bizra_storage::VoterSetChange {
            from_height: h,
            log_index: h,
            voters: [(1, format!("peer-{h}"))].into(),
            learners: Default::default(),
            joint: false,
        };
        let mut k = vec![b'V'];
        k.extend_from_slice(&h.to_be_bytes());
        tree.insert(k, encode(&change)).expect("insert");
    }
    db.flush().expect("flush");
}

/// Codec bytes of a stored record, for writing an old layout by hand.
fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bizra_crypto::codec::encode(v).expect("encodes")
}

fn sled_has_state_tree(dir: &std::path::Path) -> bool {
    let db = sled::Config::new()
        .path(dir.join("sled"))
        .segment_size(16 << 20)
        .open()
        .expect("reopens");
    let found = db.tree_names().iter().any(|n| n.as_ref() == b"state");
    found
}

#[test]
fn tables_of_the_sled_layout_are_moved_at_open() {
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    write_sled_state(dir.path(), 42, 1..=300);
    // The second open reads the moved tables again, from the keyspace.
    for _ in 0..2 {
        let store = Store::open(dir.path()).expect("opens");
        let (applied, _) = store.state().applied_state().expect("read");
        assert_eq!(applied, Some(log_id(2, 42)));
        let changes = store.state().voter_set_changes().expect("read");
        assert_eq!(changes.len(), 300);
        assert_eq!(changes[299].voters[&1], "peer-300");
    }
    assert!(!sled_has_state_tree(dir.path()), "the old tree is dropped");

    // A move that was interrupted (the sled tree still there, the
    // keyspace holding what an earlier attempt wrote) starts over: only
    // the sled tree's records remain.
    write_sled_state(dir.path(), 7, 1..=3);
    let store = Store::open(dir.path()).expect("opens");
    let (applied, _) = store.state().applied_state().expect("read");
    assert_eq!(applied, Some(log_id(2, 7)));
    assert_eq!(store.state().voter_set_changes().expect("read").len(), 3);
    drop(store);
    assert!(!sled_has_state_tree(dir.path()));
}

#[test]
fn a_view_exports_the_state_when_taken_not_later_commits() {
    let (_dir_a, a) = fresh_tables();
    let (_dir_b, b) = fresh_tables();
    // Enough pairs for several export frames of about 1 MiB.
    let b1 = block(
        1,
        [0; 32],
        (0..6000u64)
            .map(|n| att((n % 250) as u8, (n % 7) as u8, n))
            .collect(),
    );
    a.commit(StateUpdate {
        applied: log_id(1, 11),
        membership: None,
        block: Some(b1.clone()),
    })
    .expect("commit block 1");
    let view = a.view();
    let b2 = block(2, b1.hash, vec![att(1, 7, 9999)]);
    a.commit(StateUpdate {
        applied: log_id(1, 12),
        membership: None,
        block: Some(b2.clone()),
    })
    .expect("commit block 2");

    let data = view.export().expect("export of the view");
    drop(view);
    assert!(data.len() > 2 << 20, "only {} bytes", data.len());
    let parsed = StateTables::parse_snapshot(&data).expect("own export parses");
    b.install(parsed, Some(log_id(1, 11)), &MembershipOf::default())
        .expect("install");
    assert_eq!(b.block(1).expect("read").map(|s| s.hash), Some(b1.hash));
    assert_eq!(b.block(2).expect("read"), None);
    assert_eq!(b.attestation(&att(1, 7, 9999).0).expect("read"), None);
    assert!(b.attestation(&att(5, 5, 5999).0).expect("read").is_some());
    assert_eq!(b.export().expect("export"), data);
    assert_ne!(a.export().expect("export"), data);
}

/// Threads of this process whose name is one of `names`, with their nice
/// values (`/proc/self/task/*/stat`, field 19).
#[cfg(target_os = "linux")]
fn threads_named(names: &[&str]) -> Vec<(u32, i32)> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("read /proc/self/task");
    tasks
        .filter_map(|task| {
            let tid: u32 = task.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1;
            // After the name: field 3 (state) is the first, so 19 is the 17th.
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            names.contains(&name).then_some((tid, nice))
        })
        .collect()
}

/// fjall's flush and compaction threads run `background_nice` below the
/// thread that opened the store, and the opener's own priority is kept.
/// Uses the default increment, so that stores other tests of this binary
/// open meanwhile (under `cargo test`, threads of one process) cannot make
/// it fail.
#[cfg(target_os = "linux")]
#[test]
fn state_tables_background_threads_run_at_a_lower_priority() {
    use bizra_storage::{StoreOptions, DEFAULT_BACKGROUND_NICE, MAX_BACKGROUND_NICE};
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    const NAMES: [&str; 2] = ["flusher", "compactor"];
    let own_nice = || {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read own stat");
        let rest = stat.rsplit_once(')').expect("stat has a name").1;
        rest.split_whitespace()
            .nth(16)
            .expect("nice field")
            .parse::<i32>()
            .expect("nice")
    };
    let nice_before = own_nice();
    let existing: HashSet<u32> = threads_named(&NAMES).into_iter().map(|(t, _)| t).collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions::default();
    assert_eq!(options.background_nice, DEFAULT_BACKGROUND_NICE);
    let store = Store::open_with(dir.path(), options).expect("open store");

    // A new thread names itself once it runs, so wait (bounded) for both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let started = loop {
        let new: Vec<(u32, i32)> = threads_named(&NAMES)
            .into_iter()
            .filter(|(tid, _)| !existing.contains(tid))
            .collect();
        if new.len() >= 2 || Instant::now() > deadline {
            break new;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        started.len() >= 2,
        "expected a flusher and a compactor thread, found {started:?}"
    );
    let expected =
        (nice_before + i32::from(DEFAULT_BACKGROUND_NICE)).min(i32::from(MAX_BACKGROUND_NICE));
    for (tid, nice) in &started {
        assert_eq!(*nice, expected, "thread {tid} of the state tables");
    }
    assert_eq!(
        own_nice(),
        nice_before,
        "the opening thread keeps its priority"
    );
    drop(store);
}

/// The compaction strategy is chosen when the state tables are created:
/// a new store takes the requested one (tiered by default), and a store
/// reopened with another request keeps its own, since fjall persists the
/// strategy with the partition.
#[test]
fn state_tables_keep_the_compaction_strategy_they_were_created_with() {
    use bizra_storage::{StateCompaction, StoreOptions};

    let with = |state_compaction| StoreOptions {
        state_compaction,
        ..StoreOptions::default()
    };
    assert_eq!(
        StoreOptions::default().state_compaction,
        StateCompaction::Tiered
    );

    let tiered = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with(tiered.path(), StoreOptions::default()).expect("open");
    assert_eq!(store.state().compaction(), Some(StateCompaction::Tiered));
    drop(store);
    let store = Store::open_with(tiered.path(), with(StateCompaction::Leveled)).expect("reopen");
    assert_eq!(
        store.state().compaction(),
        Some(StateCompaction::Tiered),
        "an existing store keeps the strategy it was created with"
    );
    drop(store);

    let leveled = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with(leveled.path(), with(StateCompaction::Leveled)).expect("open");
    assert_eq!(store.state().compaction(), Some(StateCompaction::Leveled));
    drop(store);
    let store = Store::open_with(leveled.path(), StoreOptions::default()).expect("reopen");
    assert_eq!(store.state().compaction(), Some(StateCompaction::Leveled));
}
