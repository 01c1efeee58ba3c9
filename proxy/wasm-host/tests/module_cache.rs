//! Compiled modules are cached on disk by content hash, reused by the next host, and a damaged
//! cache entry is ignored (recompiled), never trusted.

mod common;

use common::*;
use proxy_wasm_host::{Host, HostOptions, PluginSpec, Verdict};
use std::path::{Path, PathBuf};

fn fresh_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("wasm-cache-test-{}-{nanos}", std::process::id()))
}

fn cached_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

async fn load_and_serve(dir: &Path) {
    let host = Host::new(HostOptions {
        cache_dir: Some(dir.to_path_buf()),
        ..HostOptions::default()
    })
    .unwrap();
    let plugin = host
        .load_plugin(
            &wasm("abi_probe_filter"),
            PluginSpec::new("probe", "local-reply"),
        )
        .await
        .unwrap();
    let verdict = plugin
        .new_http_stream(Default::default())
        .on_request_headers(&mut request("/"), true)
        .await;
    assert!(matches!(verdict, Verdict::Respond(r) if r.status == 418));
}

#[tokio::test]
async fn cache_is_written_reused_and_survives_corruption() {
    let dir = fresh_dir();
    load_and_serve(&dir).await;
    let files = cached_files(&dir);
    assert_eq!(files.len(), 1, "one artifact per module");
    let written = std::fs::metadata(&files[0]).unwrap().modified().unwrap();

    load_and_serve(&dir).await;
    assert_eq!(cached_files(&dir), files, "the same artifact is reused");
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        written,
        "not rewritten"
    );

    std::fs::write(&files[0], b"garbage").unwrap();
    load_and_serve(&dir).await;
    assert!(
        std::fs::read(&files[0]).unwrap().len() > 1000,
        "recompiled and rewritten"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
