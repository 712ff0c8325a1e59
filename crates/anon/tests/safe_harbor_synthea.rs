//! Safe Harbor on the Synthea bundle (`../shared/data/fhir/synthea-bundle-a.json`):
//! every identifier of its patient, listed here, is in the extracted table before, and
//! in no cell of the released one after.

use medmesh_anon::{fhir_table, policy, Mapping, Policy};
use medmesh_testkit::shared_data;

/// The identifiers of the bundle's patient and its dates of service: names, address
/// below the state, ZIP, birth date, phone, SSN, MRN, driver's licence, passport, the
/// resource ids, coordinates, the exact times of observations.
const IDENTIFIERS: &[&str] = &[
    "Aaron697",
    "Brekke496",
    "Deadra347 Borer986",
    "894 Brakus Bypass",
    "Taunton",
    "Billerica",
    "02718",
    "1945-12-10",
    "555-677-3119",
    "999-93-7537",
    "2fa15bc7-8866-461a-9000-f739e425860a",
    "S99948707",
    "X14078167X",
    "5cbc121b-cd71-4428-b8b7-31e53eba8184",
    "41.93879298871088",
    "-71.06682353144593",
];

const POLICY: &str = include_str!("../../../docs/anonymization/synthea-observations.toml");

#[test]
fn safe_harbor_leaves_no_identifier_of_the_synthea_patient() {
    let bundle = std::fs::read(shared_data("fhir/synthea-bundle-a.json")).unwrap();
    let policy = Policy::from_toml(POLICY, std::path::Path::new(".")).unwrap();
    let mapping: &Mapping = policy.mapping.as_ref().unwrap();
    let table = fhir_table(&[&bundle], mapping).unwrap();
    assert_eq!(table.len(), 187, "one row per Observation of the bundle");
    let cells = |t: &medmesh_anon::Table| -> Vec<String> {
        (0..t.len())
            .flat_map(|row| {
                t.row(row)
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let before = cells(&table);
    for identifier in IDENTIFIERS {
        assert!(
            before.iter().any(|c| c == identifier),
            "{identifier} is not in the extracted table: the test would prove nothing"
        );
    }
    // Observation times are identifiers too (dates of service): they are in the input.
    let times: Vec<String> = table.column("effective").unwrap().dictionary().to_vec();
    assert!(times.iter().all(|t| t.len() > 4), "{times:?}");

    let release = policy::release(table, &policy, [7; 32]).unwrap();
    let released = release
        .table
        .as_ref()
        .expect("one patient's rows are one class");
    let after = cells(released);
    for identifier in IDENTIFIERS.iter().map(|s| s.to_string()).chain(times) {
        assert!(
            !after.iter().any(|c| c.contains(identifier.as_str())),
            "`{identifier}` survived Safe Harbor"
        );
    }
    // What is left, and what became of it.
    assert_eq!(
        released.names(),
        [
            "patient_id",
            "state",
            "zip",
            "mrn",
            "birth_date",
            "gender",
            "effective",
            "code",
            "value"
        ]
    );
    let zip = released.column("zip").unwrap().dictionary();
    assert!(
        zip.iter().all(|z| z == "027" || z.ends_with('*')),
        "{zip:?}"
    );
    let birth = released.column("birth_date").unwrap().dictionary();
    assert!(
        birth
            .iter()
            .all(|b| b == "1945" || b == "1940-1949" || b == "*"),
        "{birth:?}"
    );
    let pseudonyms = released.column("patient_id").unwrap().dictionary();
    assert_eq!(pseudonyms.len(), 1, "one patient, one pseudonym");
    assert_eq!(pseudonyms[0].len(), 32);
    for line in release.safe_harbor.to_string().lines() {
        eprintln!("{line}");
    }
    eprintln!("{release}");
}
