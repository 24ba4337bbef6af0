//! Our OVSDB client against a real ovsdb-server + ovs-vswitchd (private, in a namespace made
//! here). Run:
//! `sudo -E MOSE_ROOT_TESTS=1 cargo test -p mose-overlay --test ovsdb_server -- --nocapture`

mod common;

use std::time::Duration;

use common::Lab;
use mose_overlay::ovsdb::{BridgeOptions, PortKind, PortSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_port_ensure_are_idempotent() {
    mose_testkit::root_test!(common::OVS_TOOLS);
    let mut lab = Lab::new("mov-db-");
    let (_ns, host) = lab.host("h").await;
    let mut db = host.ovsdb().await.unwrap();
    db.echo().await.unwrap();
    assert!(db
        .list_dbs()
        .await
        .unwrap()
        .contains(&"Open_vSwitch".to_string()));

    // Bridges: create, repeat, change options in place.
    let opts = BridgeOptions::default();
    let u1 = db.ensure_bridge("br1", &opts).await.unwrap();
    let u2 = db.ensure_bridge("br1", &opts).await.unwrap();
    assert_eq!(u1, u2);
    let secure = BridgeOptions {
        fail_mode: Some("secure".into()),
        ..opts.clone()
    };
    assert_eq!(
        db.ensure_bridge("br1", &secure).await.unwrap(),
        u1,
        "updated in place, not recreated"
    );
    assert_eq!(
        db.list_bridges().await.unwrap(),
        vec!["br0".to_string(), "br1".to_string()]
    );

    // Ports of every kind, each ensured twice.
    let specs = [
        PortSpec {
            ofport_request: Some(10),
            ..PortSpec::new("int1", PortKind::Internal)
        },
        PortSpec::new(
            "patch-a",
            PortKind::Patch {
                peer: "patch-b".into(),
            },
        ),
        PortSpec::new(
            "vx1",
            PortKind::Vxlan {
                remote_ip: "10.200.0.2".into(),
                key: Some(42),
                dst_port: None,
            },
        ),
    ];
    for s in &specs {
        db.ensure_port("br1", s).await.unwrap();
        db.ensure_port("br1", s).await.unwrap();
    }
    db.ensure_port(
        "br0",
        &PortSpec::new(
            "patch-b",
            PortKind::Patch {
                peer: "patch-a".into(),
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        db.wait_ofport("int1", Duration::from_secs(10))
            .await
            .unwrap(),
        10,
        "ofport_request honoured"
    );
    for p in ["patch-a", "patch-b", "vx1"] {
        let n = db.wait_ofport(p, Duration::from_secs(10)).await.unwrap();
        println!("{p}: ofport {n}");
    }
    let ports = db.list_ports("br1").await.unwrap();
    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["br1", "int1", "patch-a", "vx1"]);
    let vx = ports.iter().find(|p| p.name == "vx1").unwrap();
    assert_eq!(vx.iface_type, "vxlan");
    assert_eq!(vx.options.get("key").map(String::as_str), Some("42"));
    assert!(
        ports.iter().all(|p| p.ofport.is_some_and(|n| n > 0)),
        "{ports:?}"
    );

    // Changing a port's options updates it in place.
    let moved = PortSpec::new(
        "vx1",
        PortKind::Vxlan {
            remote_ip: "10.200.0.3".into(),
            key: Some(42),
            dst_port: None,
        },
    );
    db.ensure_port("br1", &moved).await.unwrap();
    let ports = db.list_ports("br1").await.unwrap();
    assert_eq!(
        ports.iter().find(|p| p.name == "vx1").unwrap().options["remote_ip"],
        "10.200.0.3"
    );
    assert_eq!(ports.len(), 4);

    // A port name already used on another bridge is refused, not silently moved.
    assert!(db
        .ensure_port("br0", &PortSpec::new("int1", PortKind::Internal))
        .await
        .is_err());
    assert!(db
        .ensure_port("nobr", &PortSpec::new("x1", PortKind::Internal))
        .await
        .is_err());

    // Removal is idempotent.
    assert!(db.remove_port("br1", "int1").await.unwrap());
    // ovs-vswitchd confirms it applied the removal.
    db.sync(Duration::from_secs(10)).await.unwrap();
    assert!(!db.remove_port("br1", "int1").await.unwrap());
    assert_eq!(db.ofport("int1").await.unwrap(), None);
    assert!(db.delete_bridge("br1").await.unwrap());
    assert!(!db.delete_bridge("br1").await.unwrap());
    assert_eq!(db.list_bridges().await.unwrap(), vec!["br0".to_string()]);
}
