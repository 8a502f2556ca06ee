use super::*;
use hayloft_proto::VolumeStatus;

const DAY: u64 = 86_400;

fn volume(id: u32, tier: ProtoTier, sealed_days_ago: u64, reads: f64) -> VolumeRecord {
    let now = 1000 * DAY;
    VolumeRecord {
        status: Some(VolumeStatus {
            volume_id: id,
            tier: tier as i32,
            sealed: true,
            sealed_at: now - sealed_days_ago * DAY,
            reads_per_day: reads,
            read_stats_seconds: 7 * DAY,
            file_bytes: 1_000_000_000,
            live_bytes: 900_000_000,
            collection: "photos".into(),
            ..VolumeStatus::default()
        }),
        state: VolumeState::Sealed as i32,
        server_id: "s1".into(),
        ..VolumeRecord::default()
    }
}

const EXAMPLE: &str = r#"
    [prices]
    hot = 0.10
    warm = 0.03
    GLACIER = 0.004

    [[rule]]
    name = "aged-to-warm"
    from = "hot"
    min_age = "7d"
    max_reads_per_day = 1000
    target = "warm"

    [[rule]]
    name = "archive"
    min_age = "180d"
    max_reads_per_day = 1
    target = "cold"
    bucket = "archive"
    storage_class = "GLACIER"

    [[promote]]
    name = "hot-again"
    min_reads_per_day = 500
    target = "warm"

    [[expire]]
    name = "tmp"
    collection = "tmp"
    min_age = "30d"
"#;

#[test]
fn rules_pick_moves_and_promotions() {
    let policy = Policy::parse(EXAMPLE).unwrap();
    let now = 1000 * DAY;
    let volumes = vec![
        volume(1, ProtoTier::Hot, 1, 10.0),     // too young
        volume(2, ProtoTier::Hot, 10, 10.0),    // to warm
        volume(3, ProtoTier::Warm, 200, 0.5),   // to glacier
        volume(4, ProtoTier::Cold, 300, 900.0), // promoted
        volume(5, ProtoTier::Hot, 10, 5000.0),  // too busy to demote
    ];
    let plan = plan(&policy, &volumes, now);
    let moved: Vec<_> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Move {
                volume, to, rule, ..
            } => (*volume, *to, rule.as_str()),
            other => panic!("nothing expires or drops: {other:?}"),
        })
        .collect();
    assert_eq!(
        moved,
        vec![
            (2, Tier::Warm, "aged-to-warm"),
            (3, Tier::Cold, "archive"),
            (4, Tier::Warm, "hot-again"),
        ]
    );
    assert_eq!(plan.before["hot"], 3_000_000_000);
    assert_eq!(plan.after["hot"], 2_000_000_000);
    assert_eq!(plan.after["GLACIER"], 1_000_000_000);
    let cost = policy.monthly_cost(&plan.after);
    assert!((cost["GLACIER"] - 0.004).abs() < 1e-9);
}

#[test]
fn a_volume_other_regions_keep_stays_in_the_local_tiers() {
    let policy = Policy::parse(EXAMPLE).unwrap();
    let now = 1000 * DAY;
    let mut shipped = vec![
        volume(2, ProtoTier::Hot, 10, 10.0),  // to warm: still planned
        volume(3, ProtoTier::Warm, 200, 0.5), // to glacier: not while shipped
    ];
    for record in &mut shipped {
        record.regions = vec!["eu".into(), "us".into()];
    }
    let plan = plan(&policy, &shipped, now);
    let moved: Vec<_> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Move { volume, to, .. } => (*volume, *to),
            other => panic!("only moves: {other:?}"),
        })
        .collect();
    assert_eq!(moved, vec![(2, Tier::Warm)]);
    assert_eq!(plan.after.get("GLACIER"), None);
    assert_eq!(plan.after["warm"], 2_000_000_000);
    // Kept by its own region only, it goes cold as before.
    let mut alone = volume(3, ProtoTier::Warm, 200, 0.5);
    alone.regions = vec!["eu".into()];
    let plan = super::plan(&policy, &[alone], now);
    assert!(matches!(
        &plan.actions[..],
        [Action::Move { to: Tier::Cold, .. }]
    ));
}

#[test]
fn expiry_and_unobserved_reads() {
    let policy = Policy::parse(EXAMPLE).unwrap();
    let now = 1000 * DAY;
    let mut expired = volume(1, ProtoTier::Hot, 1, 0.0);
    if let Some(s) = expired.status.as_mut() {
        s.expires_at = now - 1;
    }
    let mut tmp = volume(2, ProtoTier::Warm, 31, 0.0);
    if let Some(s) = tmp.status.as_mut() {
        s.collection = "tmp".into();
    }
    // Read counts restarted a minute ago: no demotion on them.
    let mut fresh = volume(3, ProtoTier::Hot, 10, 0.0);
    if let Some(s) = fresh.status.as_mut() {
        s.read_stats_seconds = 60;
    }
    let plan = plan(&policy, &[expired, tmp, fresh], now);
    assert_eq!(plan.actions.len(), 2);
    assert!(matches!(&plan.actions[0], Action::Delete { volume: 1, .. }));
    assert!(matches!(&plan.actions[1], Action::Delete { volume: 2, rule, .. } if rule == "tmp"));
}

#[test]
fn bad_policies_are_refused() {
    for bad in [
        "[[rule]]\nname='x'\ntarget='cold'\n",
        "[[rule]]\nname='x'\ntarget='cold'\nbucket='b'\nstorage_class='TAPE'\n",
        "[[rule]]\nname='x'\nfrom='warm'\ntarget='hot'\n",
        "[[promote]]\nname='x'\nmin_reads_per_day=1.0\ntarget='cold'\n",
        "[[rule]]\nname='x'\ntarget='warm'\nunknown=1\n",
    ] {
        assert!(Policy::parse(bad).is_err(), "{bad}");
    }
}

/// `volume` with three copies on s1..s3, each as `volume` reports it.
fn replicated(mut record: VolumeRecord) -> VolumeRecord {
    let status = record.status.clone().unwrap();
    record.replication = 3;
    record.health = hayloft_proto::VolumeHealth::Ok as i32;
    record.replicas = ["s1", "s2", "s3"]
        .iter()
        .map(|s| hayloft_proto::Replica {
            location: Some(hayloft_proto::ServerLocation {
                server_id: (*s).into(),
                ..Default::default()
            }),
            health: hayloft_proto::ReplicaHealth::Ok as i32,
            needles: 1,
            status: Some(status.clone()),
        })
        .collect();
    record
}

#[test]
fn replicated_volumes_are_planned_as_a_whole() {
    let policy = Policy::parse(EXAMPLE).unwrap();
    let now = 1000 * DAY;
    let servers = |plan: &Plan| -> Vec<(u32, String)> {
        plan.actions
            .iter()
            .map(|a| (a.volume(), a.server().to_owned()))
            .collect()
    };
    // To warm: every copy. To cold: the first copy uploads, alone. The
    // policy sees the reads of all three copies (3 x 400 > 1000).
    let plan = plan(
        &policy,
        &[
            replicated(volume(2, ProtoTier::Hot, 10, 10.0)),
            replicated(volume(3, ProtoTier::Warm, 200, 0.1)),
            replicated(volume(5, ProtoTier::Hot, 10, 400.0)),
        ],
        now,
    );
    assert_eq!(
        servers(&plan),
        [
            (2, "s1".into()),
            (2, "s2".into()),
            (2, "s3".into()),
            (3, "s1".into())
        ]
    );
    assert!(matches!(
        &plan.actions[3],
        Action::Move { to: Tier::Cold, share_cold_from, .. } if share_cold_from.is_empty()
    ));
    // Billing: three local copies now; one object after.
    assert_eq!(plan.before["warm"], 3_000_000_000);
    assert_eq!(plan.after["GLACIER"], 1_000_000_000);

    // Expired: every copy is deleted, the last one forgets the volume.
    let mut expired = replicated(volume(1, ProtoTier::Hot, 1, 0.0));
    for replica in &mut expired.replicas {
        if let Some(s) = replica.status.as_mut() {
            s.expires_at = now - 1;
        }
    }
    let forgets: Vec<bool> = plan_for(&policy, expired.clone(), now)
        .iter()
        .map(|a| matches!(a, Action::Delete { forget: true, .. }))
        .collect();
    assert_eq!(forgets, [false, false, true]);
    // ...but not while a copy is down (it would come back unknown).
    expired.replicas[1].health = hayloft_proto::ReplicaHealth::Down as i32;
    assert!(plan_for(&policy, expired, now).is_empty());
}

fn plan_for(policy: &Policy, record: VolumeRecord, now: u64) -> Vec<Action> {
    plan(policy, &[record], now).actions
}
