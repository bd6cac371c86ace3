use super::*;
use rand::SeedableRng;

fn loc() -> Location {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut l = Location::new("1".into(), "L".into(), "t".into(), Utc::now(), 2, &mut rng);
    l.add_asset(Asset {
        adam_id: "A".into(),
        pricing_param: "STDQ".into(),
        product_type: "App".into(),
        total: Some(2),
        device_assignable: true,
        revocable: true,
        supported_platforms: vec!["iOS".into()],
        assigned: 0,
    })
    .unwrap();
    l
}

fn params(pairs: &[(&str, &str)]) -> Params {
    Params(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn pagination_bounds() {
    let (p, m) = paginate(vec![1, 2, 3], 2, Some(1)).unwrap();
    assert_eq!(p, vec![3]);
    assert!(m.get("nextPageIndex").is_none());
    assert_eq!(m["totalPages"], 2);
    let (_, m) = paginate(vec![1, 2, 3], 2, None).unwrap();
    assert_eq!(m["nextPageIndex"], 1);
    let (p, m) = paginate(Vec::<i32>::new(), 2, Some(0)).unwrap();
    assert!(p.is_empty());
    assert_eq!(m["totalPages"], 1);
    assert_eq!(paginate(vec![1], 2, Some(1)).unwrap_err().number, 9650);
    assert_eq!(paginate(vec![1], 2, Some(-1)).unwrap_err().number, 9650);
}

#[test]
fn associate_runs_out_and_since_version_hides_removals() {
    let mut l = loc();
    let v0 = l.version_id(DataSet::Assignments).to_string();
    let targets = vec![
        Target::Serial("a".into()),
        Target::Serial("b".into()),
        Target::Serial("c".into()),
    ];
    l.add_event(Event {
        id: "e1".into(),
        kind: EventType::Associate,
        status: EventStatus::Pending,
        num_requested: 3,
        num_completed: 0,
        failures: vec![],
        request: Some(WriteRequest::Assets {
            assets: vec![("A".into(), "STDQ".into())],
            targets,
        }),
        due: tokio::time::Instant::now(),
    });
    let (_, applied) = l.process("e1").unwrap();
    assert_eq!(applied.ok.len(), 2);
    assert_eq!(applied.failed[0].0, 9709);
    let ev = l.event("e1").unwrap();
    assert_eq!((ev.status, ev.num_completed), (EventStatus::Failed, 2));
    assert_eq!(l.asset("A", "STDQ").unwrap().available_count(), 0);
    // A second processing is a no-op.
    assert!(l.process("e1").is_none());

    let m = l
        .get_assignments(&params(&[("sinceVersionId", &v0)]))
        .unwrap();
    assert_eq!(m["assignments"].as_array().unwrap().len(), 2);
    let v1 = l.version_id(DataSet::Assignments).to_string();
    l.add_event(Event {
        id: "e2".into(),
        kind: EventType::Disassociate,
        status: EventStatus::Pending,
        num_requested: 1,
        num_completed: 0,
        failures: vec![],
        request: Some(WriteRequest::Assets {
            assets: vec![("A".into(), "STDQ".into())],
            targets: vec![Target::Serial("a".into())],
        }),
        due: tokio::time::Instant::now(),
    });
    l.process("e2").unwrap();
    let m = l
        .get_assignments(&params(&[("sinceVersionId", &v1)]))
        .unwrap();
    assert_eq!(m["assignments"], json!([]));
    assert_ne!(m["versionId"], json!(v1));
    assert_eq!(
        l.get_assignments(&params(&[("sinceVersionId", "x")]))
            .unwrap_err()
            .number,
        9721
    );
}

#[test]
fn keyed_ids_follow_what_they_name() {
    let a = keyed(7, &["event", "0"]);
    assert_eq!(a, keyed(7, &["event", "0"]));
    assert_ne!(a, keyed(7, &["event", "1"]));
    assert_ne!(a, keyed(8, &["event", "0"]));
    // Part boundaries count: ("ab", "c") is not ("a", "bc").
    assert_ne!(keyed(7, &["ab", "c"]), keyed(7, &["a", "bc"]));
    let id = keyed_uuid(a);
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_ne!(id, keyed_uuid(a ^ 1));
    assert_eq!(keyed_hex(a, 20).len(), 40);
    assert!((0.0..1.0).contains(&unit(u64::MAX)));
}

#[test]
fn unfiltered_pages_are_the_filtered_path_s_pages() {
    let mut l = loc();
    l.page_size = 3;
    for i in 0..7 {
        let target = if i % 2 == 0 {
            Target::Serial(format!("s{i}"))
        } else {
            Target::User(format!("u{i}"))
        };
        let key = AssignKey {
            adam_id: "A".into(),
            pricing_param: "STDQ".into(),
            target,
        };
        l.assignments.insert(key, i);
    }
    // Every assignment is STDQ, so the filter keeps them all but takes the filtered path.
    for page in ["0", "1", "2"] {
        let fast = l.get_assignments(&params(&[("pageIndex", page)])).unwrap();
        let slow = l
            .get_assignments(&params(&[("pageIndex", page), ("pricingParam", "STDQ")]))
            .unwrap();
        assert_eq!(fast, slow, "page {page}");
    }
    let fast = l.get_assignments(&params(&[])).unwrap();
    assert_eq!(fast["totalPages"], json!(3));
    assert_eq!(fast["nextPageIndex"], json!(1));
    assert_eq!(fast["assignments"].as_array().unwrap().len(), 3);
    assert_eq!(
        l.get_assignments(&params(&[("pageIndex", "3")]))
            .unwrap_err()
            .number,
        9650
    );
}
