//! Unit tests of the formats and of the chunk-map tree against an in-memory store.

#![allow(clippy::unwrap_used, clippy::panic)]

use bytes::Bytes;
use proptest::prelude::*;

use crate::format::index::{self, PackEntries};
use crate::format::manifest::{Manifest, PointKind};
use crate::format::pack::{self, PackBuilder, PackClass};
use crate::format::{BlobKind, Codec, Id, Keys, compress, decode_blob};
use crate::repo::{Repository, build_tree};
use crate::store::Store;

fn keys() -> Keys {
    Keys::new([7; 32])
}

fn stored(plain: &[u8]) -> (Codec, Vec<u8>) {
    match compress(plain) {
        Some(z) => (Codec::Zstd, z),
        None => (Codec::Raw, plain.to_vec()),
    }
}

proptest! {
    #[test]
    fn packs_round_trip(blobs in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..3000), 1..20), text in any::<bool>()) {
        let keys = keys();
        let mut b = PackBuilder::new(PackClass::Delta);
        let mut plains = Vec::new();
        for (i, raw) in blobs.iter().enumerate() {
            // Some compressible blobs too.
            let plain: Vec<u8> = if text && i % 2 == 0 { raw.iter().map(|x| x % 4).collect() } else { raw.clone() };
            let id = keys.id(&plain);
            let (codec, s) = stored(&plain);
            b.add(id, BlobKind::Chunk, codec, plain.len() as u32, &s);
            plains.push((id, plain));
        }
        let (name, bytes, entries) = b.finish();
        let (footer, parsed) = pack::parse(&name, &bytes).unwrap();
        prop_assert_eq!(footer.class, PackClass::Delta);
        prop_assert_eq!(&parsed, &entries);
        for (e, (id, plain)) in parsed.iter().zip(&plains) {
            let s = &bytes[e.offset as usize..(e.offset + e.stored_len as u64) as usize];
            prop_assert_eq!(&decode_blob(&keys, *id, e.codec, e.raw_len, s).unwrap(), plain);
        }
        let (iname, ibytes) = index::encode(&[PackEntries { pack: name.clone(), entries: entries.clone() }]);
        let back = index::decode(&iname, &ibytes).unwrap();
        prop_assert_eq!(&back[0].pack, &name);
        prop_assert_eq!(&back[0].entries, &entries);
    }

    #[test]
    fn a_flipped_bit_anywhere_is_caught(plain in prop::collection::vec(any::<u8>(), 100..2000), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let keys = keys();
        let id = keys.id(&plain);
        let (codec, s) = stored(&plain);
        let mut b = PackBuilder::new(PackClass::Seed);
        b.add(id, BlobKind::Chunk, codec, plain.len() as u32, &s);
        let (name, mut bytes, entries) = b.finish();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let e = entries[0];
        let blob_ok = (e.offset as usize + e.stored_len as usize) <= bytes.len()
            && decode_blob(&keys, id, e.codec, e.raw_len, &bytes[e.offset as usize..(e.offset + e.stored_len as u64) as usize]).is_ok();
        // Either the trailer check or the blob check fails: never both pass.
        prop_assert!(pack::parse(&name, &bytes).is_err() || !blob_ok);
    }

    #[test]
    fn chunk_maps_round_trip_through_the_tree(len in 0usize..2500, zero_every in 1usize..7, seed in any::<u64>()) {
        let map: Vec<Id> = (0..len)
            .map(|i| {
                if i % zero_every == 0 {
                    Id::ZERO
                } else {
                    Id(*blake3::hash(&[seed.to_le_bytes(), (i as u64).to_le_bytes()].concat()).as_bytes())
                }
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let back = rt.block_on(async {
            let store = Store::memory();
            let mut repo = Repository::open_or_create(&store).await.unwrap();
            let (root, pages) = build_tree(repo.keys(), &map);
            let mut b = PackBuilder::new(PackClass::Meta);
            for (id, bytes) in &pages {
                b.add(*id, BlobKind::Page, Codec::Raw, bytes.len() as u32, bytes);
            }
            let (name, bytes, entries) = b.finish();
            repo.store().put_new(&pack::object_name(&name), Bytes::from(bytes)).await.unwrap();
            repo.index_mut().add(&name, &entries);
            repo.chunk_map(root, map.len() as u64).await.unwrap()
        });
        prop_assert_eq!(back, map);
    }
}

#[test]
fn unchanged_pages_keep_their_ids() {
    let keys = keys();
    let mut map: Vec<Id> = (0..5000u32).map(|i| keys.id(&i.to_le_bytes())).collect();
    let (root_a, pages_a) = build_tree(&keys, &map);
    map[4000] = keys.id(b"changed");
    let (root_b, pages_b) = build_tree(&keys, &map);
    assert_ne!(root_a, root_b);
    let old: std::collections::HashSet<Id> = pages_a.iter().map(|(id, _)| *id).collect();
    let new: Vec<Id> = pages_b
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !old.contains(id))
        .collect();
    // One leaf and the root changed; the other 9 leaves are shared.
    assert_eq!(new.len(), 2, "{new:?}");
}

#[test]
fn manifests_detect_any_change() {
    let keys = keys();
    let m = Manifest {
        format: Manifest::new_format(),
        group: "g".into(),
        seq: 3,
        parent: Some(2),
        kind: PointKind::Crash,
        captured_at: "2026-11-22T00:00:00Z".into(),
        captured_unix_ms: 1,
        committed_at: "2026-11-22T00:00:01Z".into(),
        committed_unix_ms: 2,
        epoch: 1,
        writer: "test".into(),
        vms: Vec::new(),
        notes: vec!["unsafe-live-read: a note".into()],
    };
    let bytes = m.encode(&keys);
    assert_eq!(Manifest::decode(&keys, &bytes).unwrap(), m);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        assert!(
            Manifest::decode(&keys, &b).is_err(),
            "flip at {i} not caught"
        );
    }
    assert!(Manifest::decode(&Keys::new([8; 32]), &bytes).is_err());
}

#[test]
fn sparse_files_report_their_data_regions() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&[1; 4096], 10 << 20).unwrap();
    f.sync_all().unwrap();
    let regions = crate::capture::data_regions(&f, 64 << 20);
    let covered: u64 = regions.iter().map(|(s, e)| e - s).sum();
    assert!(
        regions
            .iter()
            .any(|(s, e)| *s <= 10 << 20 && (10 << 20) + 4096 <= *e)
    );
    assert!(covered < 4 << 20, "holes read as data: {regions:?}");
}

#[test]
fn store_options_ride_in_the_url_query_and_never_reach_messages() {
    let base = tempfile::tempdir().unwrap();
    let e = Store::open("east?region=x", base.path()).unwrap_err();
    assert!(e.to_string().contains("takes no options"), "{e}");
    let e = Store::open("s3://b/p?no_such_option=1", base.path()).unwrap_err();
    assert!(e.to_string().contains("option `no_such_option`"), "{e}");
    let s = Store::open(
        "s3://b/p?endpoint=http://127.0.0.1:1&allow_http=true&region=us-east-1\
         &access_key_id=KEY&secret_access_key=SECRET",
        base.path(),
    )
    .unwrap();
    assert_eq!(s.location(), "s3://b/p");
    let s = Store::open("az://c/p?use_emulator=true", base.path()).unwrap();
    assert_eq!(s.location(), "az://c/p");
    // A keyed folder is the folder before its options: absent, it is not there (and not made).
    std::fs::write(base.path().join("k"), "ab".repeat(32)).unwrap();
    assert!(
        Store::open_if_present("west?key_file=k", base.path())
            .unwrap()
            .is_none()
    );
    assert!(!base.path().join("west").exists());
    std::fs::create_dir(base.path().join("west")).unwrap();
    assert!(
        Store::open_if_present("west?key_file=k", base.path())
            .unwrap()
            .is_some()
    );
}
