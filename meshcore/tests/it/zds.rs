//! The node-agent protocol over a real SOCK_SEQPACKET socket: hello, a network namespace fd
//! passed by SCM_RIGHTS, keep / del / snapshot_sent, acks with and without an error.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use meshcore::api::zds::WorkloadInfo;
use meshcore::zds::{Conn, Listener, Request};

fn inode(fd: &OwnedFd) -> u64 {
    // SAFETY: fstat on a live descriptor into a zeroed struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(fd.as_fd().as_raw_fd(), &mut st), 0);
        st.st_ino
    }
}

#[tokio::test]
async fn agent_and_ztunnel_exchange_pods_and_namespaces() {
    let dir = std::env::temp_dir().join(format!("zds-test-{}", std::process::id()));
    let path = dir.join("ztunnel.sock");
    let agent = Listener::bind(&path).unwrap();
    let ztunnel = tokio::spawn({
        let path = path.clone();
        async move {
            let conn = Conn::connect(&path).await.unwrap();
            let mut seen = Vec::new();
            while let Some(request) = conn.next_request().await.unwrap() {
                let answer = match &request {
                    Request::Del { uid } if uid == "missing" => Some(format!("no pod {uid}")),
                    _ => None,
                };
                if let Request::Add { netns, .. } = &request {
                    seen.push(format!("netns inode {}", inode(netns)));
                }
                seen.push(
                    format!("{request:?}")
                        .split(['{', ' '])
                        .next()
                        .unwrap()
                        .to_owned(),
                );
                conn.ack(answer).await.unwrap();
            }
            seen
        }
    });
    let conn = agent.accept().await.unwrap();
    conn.expect_hello().await.unwrap();

    let own_netns: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
    let expected_inode = inode(&own_netns);
    let info = WorkloadInfo {
        name: "cart-1".into(),
        namespace: "shop".into(),
        service_account: "cart".into(),
    };
    let add = Request::Add {
        uid: "pod-uid-1".into(),
        info: Some(info),
        netns: own_netns,
    };
    assert_eq!(conn.request(add).await.unwrap(), Ok(()));
    assert_eq!(
        conn.request(Request::Keep {
            uid: "pod-uid-1".into()
        })
        .await
        .unwrap(),
        Ok(())
    );
    assert_eq!(
        conn.request(Request::Del {
            uid: "missing".into()
        })
        .await
        .unwrap(),
        Err("no pod missing".into())
    );
    assert_eq!(conn.request(Request::SnapshotSent).await.unwrap(), Ok(()));
    drop(conn);
    let seen = ztunnel.await.unwrap();
    assert_eq!(
        seen,
        [
            format!("netns inode {expected_inode}"),
            "Add".into(),
            "Keep".into(),
            "Del".into(),
            "SnapshotSent".into()
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
