//! Chunked blob transfer between two in-process Zenoh peers on loopback.

mod common;

use std::time::Duration;

use common::{image_key, pseudo_random, session_pair};
use mose_protocol::blob::{self, BlobError, BlobManifest, BlobServer, FetchOptions};
use mose_protocol::codec;
use sha2::{Digest, Sha256};

fn quick() -> FetchOptions {
    FetchOptions {
        in_flight: 4,
        chunk_timeout: Duration::from_millis(800),
        retries: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_arrives_intact_in_order_with_progress() {
    let (a, b, _domain) = session_pair().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("image.tar");
    // Not a multiple of the chunk size, so the short last chunk is exercised.
    let data = pseudo_random((8 << 20) + 12345, 7);
    std::fs::write(&src, &data).unwrap();

    let server = BlobServer::serve_file(&a, &image_key("t1", "ckpt"), &src, 1 << 20)
        .await
        .unwrap();
    assert_eq!(server.manifest().chunks, 9);

    let dest = dir.path().join("fetched.tar");
    let mut seen = Vec::new();
    let manifest = blob::fetch_to_file(&b, &image_key("t1", "ckpt"), &dest, &quick(), &mut |p| {
        seen.push(p)
    })
    .await
    .unwrap();

    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(manifest.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
    assert_eq!(seen.len(), 9, "one progress report per chunk");
    assert!(seen.windows(2).all(|w| w[0].bytes_done < w[1].bytes_done));
    assert_eq!(seen.last().unwrap().bytes_done, data.len() as u64);
    assert!(!dir.path().join("fetched.tar.partial").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_blob_transfers() {
    let (a, b, _domain) = session_pair().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("empty");
    std::fs::write(&src, b"").unwrap();
    let _server = BlobServer::serve_file(&a, &image_key("t0", "empty"), &src, 1 << 20)
        .await
        .unwrap();
    let mut sink = Vec::new();
    let m = blob::fetch_into(
        &b,
        &image_key("t0", "empty"),
        &mut sink,
        &quick(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(m.size, 0);
    assert!(sink.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_image_fails_and_leaves_no_file() {
    let (a, b, _domain) = session_pair().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("image.tar");
    let data = pseudo_random(3 << 20, 11);
    std::fs::write(&src, &data).unwrap();
    let manifest = blob::manifest_of_file(&src, 1 << 20).await.unwrap();

    // One bit of chunk 1 rots on disk after the manifest was computed.
    let mut rotten = data.clone();
    rotten[(1 << 20) + 77] ^= 0x10;
    std::fs::write(&src, &rotten).unwrap();
    let _server = BlobServer::serve(&a, &image_key("t2", "ckpt"), &src, manifest)
        .await
        .unwrap();

    let dest = dir.path().join("fetched.tar");
    let err = blob::fetch_to_file(&b, &image_key("t2", "ckpt"), &dest, &quick(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(!dest.exists(), "a corrupt blob must not land on disk");
    assert!(!dir.path().join("fetched.tar.partial").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_gone_mid_transfer_is_a_chunk_error() {
    let (a, b, _domain) = session_pair().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("image.tar");
    std::fs::write(&src, pseudo_random(16 << 20, 3)).unwrap();
    let server = BlobServer::serve_file(&a, &image_key("t3", "ckpt"), &src, 1 << 20)
        .await
        .unwrap();

    let dest = dir.path().join("fetched.tar");
    let mut server = Some(server);
    let opts = FetchOptions {
        in_flight: 1,
        chunk_timeout: Duration::from_millis(300),
        retries: 2,
    };
    let err = blob::fetch_to_file(&b, &image_key("t3", "ckpt"), &dest, &opts, &mut |p| {
        // The source agent dies after a quarter of the image.
        if p.chunks_done == 4 {
            server.take();
        }
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::ChunkUnavailable {
                index: 4,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_blob_and_bad_manifest_are_clear_errors() {
    let (a, b, _domain) = session_pair().await;
    let opts = FetchOptions {
        in_flight: 2,
        chunk_timeout: Duration::from_millis(200),
        retries: 1,
    };
    let mut sink = Vec::new();
    let err = blob::fetch_into(
        &b,
        &image_key("none", "ckpt"),
        &mut sink,
        &opts,
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, BlobError::ManifestUnavailable { attempts: 2, .. }),
        "{err}"
    );

    // A hand-rolled server answering garbage, then an inconsistent manifest.
    let garbage = a
        .declare_queryable(&image_key("bad", "ckpt/**"))
        .await
        .unwrap();
    let answers = tokio::spawn(async move {
        let q = garbage.recv_async().await.unwrap();
        q.reply(q.key_expr().clone(), vec![1u8, 2, 3, 4, 5, 6])
            .await
            .unwrap();
        let q = garbage.recv_async().await.unwrap();
        let lying = BlobManifest {
            size: 10,
            chunk_size: 4,
            chunks: 99,
            sha256: [0; 32],
        };
        q.reply(q.key_expr().clone(), codec::encode(&lying).unwrap())
            .await
            .unwrap();
    });
    let err = blob::fetch_into(&b, &image_key("bad", "ckpt"), &mut sink, &opts, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Codec(_)), "{err}");
    let err = blob::fetch_into(&b, &image_key("bad", "ckpt"), &mut sink, &opts, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::BadManifest { .. }), "{err}");
    answers.await.unwrap();

    let err = blob::fetch_into(&b, &image_key("*", "ckpt"), &mut sink, &opts, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::InvalidKey { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_chunk_is_retried_then_refused() {
    let (a, b, _domain) = session_pair().await;
    let q = a
        .declare_queryable(&image_key("short", "ckpt/**"))
        .await
        .unwrap();
    let manifest = BlobManifest {
        size: 8,
        chunk_size: 8,
        chunks: 1,
        sha256: [0; 32],
    };
    let served = tokio::spawn(async move {
        let mut chunk_asks = 0;
        while let Ok(query) = q.recv_async().await {
            if query.key_expr().as_str().ends_with("/manifest") {
                let m = codec::encode(&manifest).unwrap();
                query.reply(query.key_expr().clone(), m).await.unwrap();
            } else {
                chunk_asks += 1;
                query
                    .reply(query.key_expr().clone(), vec![0u8; 5])
                    .await
                    .unwrap();
                if chunk_asks == 2 {
                    return chunk_asks;
                }
            }
        }
        chunk_asks
    });
    let opts = FetchOptions {
        in_flight: 1,
        chunk_timeout: Duration::from_millis(500),
        retries: 1,
    };
    let mut sink = Vec::new();
    let err = blob::fetch_into(
        &b,
        &image_key("short", "ckpt"),
        &mut sink,
        &opts,
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("5 bytes, expected 8"), "{err}");
    assert_eq!(
        served.await.unwrap(),
        2,
        "the short chunk was asked for twice"
    );
    assert!(sink.is_empty(), "nothing of a bad chunk reaches the sink");
}
