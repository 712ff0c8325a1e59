//! FHIR R4 JSON: one row per resource of the mapping's type, one column per path.
//!
//! The path language is small and hand-written:
//!
//! - `a.b.c` — fields of objects, by name;
//! - `a[N]` — element `N` (from 0) of an array;
//! - `a[field=value]` — the first element of an array whose `field` equals `value`,
//!   compared as text; `field` may be dotted (`identifier[type.text=Social Security
//!   Number].value`), `value` is everything up to the closing `]` (so it may hold dots,
//!   slashes, colons, spaces: `coding[system=http://loinc.org]`);
//! - a leading `patient.` follows the row's patient reference (`subject.reference` or
//!   `patient.reference`: a bundle entry's `fullUrl` such as `urn:uuid:…`, `Patient/ID`,
//!   or an absolute URL ending in `Patient/ID`) and continues in that Patient. When the
//!   rows are Patients, `patient.` is the row itself. (So a resource's own `patient`
//!   field is reached only through the reference.)
//!
//! A single value where an array is expected counts as an array of one (`[0]` and
//! filters apply to it), as in FHIRPath. The path must end at a string, number or
//! boolean: numbers are written as serde_json writes them (the shortest text that reads
//! back as the same `f64`), booleans as `true` / `false`. An absent field, a `null`, an
//! index past the end, a filter nothing matches, an empty string or an unresolved
//! patient reference are a missing value (the empty string) — or an error when the
//! column is `required`. A path that ends at an array or object, or asks a field of an
//! array or of a string, is an error: the mapping is wrong, not the record.

use rustc_hash::FxHashMap;
use serde_json::{Map, Value};

use super::{Format, Mapping};
use crate::error::AnonError;
use crate::table::Table;

/// The resource types that can be rows.
const ROW_TYPES: &[&str] = &[
    "Patient",
    "Observation",
    "Condition",
    "Procedure",
    "Encounter",
    "MedicationRequest",
    "Immunization",
    "AllergyIntolerance",
    "DiagnosticReport",
];

/// Builds a table from FHIR R4 JSON documents: one row per resource of the type the
/// mapping's `rows` names, in the order the documents hold them.
///
/// Each document is a Bundle (its entries' resources are taken, nested Bundles too), a
/// single resource, or NDJSON (one resource per line; any whitespace-separated sequence
/// of JSON values is read). The resources of all documents are pooled, so the Patients
/// of one document serve the `patient.` paths of another (`Procedure.ndjson` with
/// `Patient.ndjson`). The path language is described in the module docs.
pub fn fhir_table(documents: &[&[u8]], mapping: &Mapping) -> Result<Table, AnonError> {
    mapping.check_format(Format::Fhir)?;
    let rows = row_type(mapping)?;
    let rows_are_patients = rows == "Patient";
    let paths = mapping
        .columns
        .iter()
        .map(|column| {
            parse_path(&column.path).map_err(|problem| AnonError::MappingPath {
                column: column.name.clone(),
                path: column.path.clone(),
                problem,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut pool = Pool::default();
    for (index, document) in documents.iter().enumerate() {
        pool.read(index + 1, document)?;
    }

    let mut table = Table::with_columns(&mapping.column_names())?;
    let mut values: Vec<String> = Vec::with_capacity(paths.len());
    let row_resources = pool.resources.iter().filter(|r| r.kind == rows);
    for (ordinal, row) in row_resources.enumerate() {
        values.clear();
        let mut link: Option<PatientLink> = None;
        for (column, path) in mapping.columns.iter().zip(&paths) {
            let through_patient = path.via_patient && !rows_are_patients;
            if through_patient && link.is_none() {
                link = Some(pool.patient_of(row));
            }
            let target = if through_patient {
                match &link {
                    Some(PatientLink::Found(index)) => Some(&pool.resources[*index]),
                    Some(PatientLink::Ambiguous(_)) => {
                        return Err(AnonError::Extract {
                            column: column.name.clone(),
                            path: column.path.clone(),
                            record: pool.describe(row, ordinal, true, link.as_ref()),
                            problem: "its patient cannot be told apart: select records of \
                                      one source, or give every patient a distinct id"
                                .into(),
                        })
                    }
                    _ => None,
                }
            } else {
                Some(row)
            };
            let found = match target {
                Some(target) => {
                    walk(&target.value, &path.steps).map_err(|mismatch| AnonError::Extract {
                        column: column.name.clone(),
                        path: column.path.clone(),
                        record: pool.describe(row, ordinal, through_patient, link.as_ref()),
                        problem: mismatch.explain(path),
                    })?
                }
                None => None,
            };
            match found {
                Some(text) if !text.is_empty() => values.push(text),
                _ if column.required => {
                    return Err(AnonError::MissingRequired {
                        column: column.name.clone(),
                        path: column.path.clone(),
                        record: pool.describe(row, ordinal, through_patient, link.as_ref()),
                    })
                }
                _ => values.push(String::new()),
            }
        }
        table.push_row(&values)?;
    }
    Ok(table)
}

/// The mapping's row type, checked against [`ROW_TYPES`].
fn row_type(mapping: &Mapping) -> Result<&str, AnonError> {
    let valid = ROW_TYPES.join(", ");
    match mapping.rows.as_deref().map(str::trim) {
        None => Err(AnonError::Mapping(format!(
            "`rows` is missing: for format = \"fhir\" it names the resource type of a row, \
             one of {valid}"
        ))),
        Some(rows) if ROW_TYPES.contains(&rows) => Ok(rows),
        Some(rows) => {
            let hint = ROW_TYPES
                .iter()
                .find(|t| t.eq_ignore_ascii_case(rows))
                .map(|t| format!(" (did you mean `{t}`?)"))
                .unwrap_or_default();
            Err(AnonError::Mapping(format!(
                "unknown FHIR row type `{rows}`{hint}; rows is one of {valid}"
            )))
        }
    }
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A field of an object.
    Field(String),
    /// An element of an array.
    Index(usize),
    /// The first element of an array whose (dotted) field equals the value.
    Filter { field: Vec<String>, value: String },
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FhirPath {
    /// It starts with `patient.`.
    via_patient: bool,
    /// The steps after that prefix.
    steps: Vec<Step>,
}

impl FhirPath {
    /// The path's text up to (not including) step `upto`, for messages.
    fn prefix(&self, upto: usize) -> String {
        let mut out = String::new();
        if self.via_patient {
            out.push_str("patient");
        }
        for step in &self.steps[..upto] {
            match step {
                Step::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Step::Index(index) => out.push_str(&format!("[{index}]")),
                Step::Filter { field, value } => {
                    out.push_str(&format!("[{}={value}]", field.join(".")));
                }
            }
        }
        out
    }
}

/// Parses a path; the error says what is wrong.
fn parse_path(text: &str) -> Result<FhirPath, String> {
    let text = text.trim();
    let (via_patient, body) = match text.strip_prefix("patient.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if body.is_empty() {
        return Err(if via_patient {
            "nothing follows `patient.`".to_owned()
        } else {
            "the path is empty".to_owned()
        });
    }
    let bytes = body.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b'.' | b'[' | b']' | b'=') {
            i += 1;
        }
        if i == start {
            return Err(if i == bytes.len() {
                "the path ends with `.`".to_owned()
            } else {
                format!(
                    "a field name is missing before `{}` (after `{}`)",
                    char::from(bytes[i]),
                    &body[..i]
                )
            });
        }
        let name = &body[start..i];
        steps.push(Step::Field(name.to_owned()));
        while i < bytes.len() && bytes[i] == b'[' {
            let close = body[i..]
                .find(']')
                .map(|offset| i + offset)
                .ok_or_else(|| format!("the `[` after `{name}` has no closing `]`"))?;
            steps.push(parse_selector(&body[i + 1..close])?);
            i = close + 1;
        }
        if i == bytes.len() {
            break;
        }
        if bytes[i] != b'.' {
            return Err(format!(
                "unexpected `{}` after `{}` (a step is followed by `.`, `[` or the end)",
                char::from(bytes[i]),
                &body[..i]
            ));
        }
        i += 1;
    }
    Ok(FhirPath { via_patient, steps })
}

/// Parses what is between `[` and `]`: an index or a filter.
fn parse_selector(inner: &str) -> Result<Step, String> {
    if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
        return inner
            .parse()
            .map(Step::Index)
            .map_err(|_| format!("the index `[{inner}]` is too large"));
    }
    let Some((field, value)) = inner.split_once('=') else {
        return Err(format!(
            "`[{inner}]` is neither an index (`[0]`) nor a filter (`[field=value]`)"
        ));
    };
    let field: Vec<String> = field.trim().split('.').map(str::to_owned).collect();
    if field
        .iter()
        .any(|name| name.is_empty() || name.contains('['))
    {
        return Err(format!(
            "the filter `[{inner}]` needs a field name before `=` (dotted names, no indexes)"
        ));
    }
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("the filter `[{inner}]` has no value after `=`"));
    }
    Ok(Step::Filter {
        field,
        value: value.to_owned(),
    })
}

/// Why a path cannot be followed in a record.
#[derive(Debug, Clone, Copy)]
struct Mismatch {
    /// The step that cannot be taken (`steps.len()`: the path ended on a non-scalar).
    step: usize,
    /// What was there instead, as "an array", "a string"…
    found: &'static str,
}

impl Mismatch {
    /// The problem, in words.
    fn explain(self, path: &FhirPath) -> String {
        let found = self.found;
        let is_array = found == ARRAY;
        if self.step >= path.steps.len() {
            let hint = if is_array {
                " (pick one element with an index `[0]` or a filter `[field=value]`)"
            } else {
                " (name one of its fields)"
            };
            return format!(
                "it reaches {found}, but a column takes a string, number or boolean{hint}"
            );
        }
        let prefix = path.prefix(self.step);
        let name = match &path.steps[self.step] {
            Step::Field(name) => name.as_str(),
            Step::Index(_) | Step::Filter { .. } => "",
        };
        if is_array {
            format!(
                "`{prefix}` is an array: pick one element (`{prefix}[0]` or \
                 `{prefix}[field=value]`) before `.{name}`"
            )
        } else {
            format!("`{prefix}` is {found}, which has no field `{name}`")
        }
    }
}

const ARRAY: &str = "an array";

/// What a JSON value is, in words.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => ARRAY,
        Value::Object(_) => "an object",
    }
}

/// Follows `steps` from `root`: the scalar's text, `None` when something is absent, or
/// the mismatch.
fn walk(root: &Value, steps: &[Step]) -> Result<Option<String>, Mismatch> {
    let mut current = root;
    for (index, step) in steps.iter().enumerate() {
        let next = match (step, current) {
            (_, Value::Null) => None,
            (Step::Field(name), Value::Object(map)) => map.get(name.as_str()),
            (Step::Field(_), other) => {
                return Err(Mismatch {
                    step: index,
                    found: json_kind(other),
                })
            }
            (Step::Index(n), Value::Array(items)) => items.get(*n),
            (Step::Index(n), single) => (*n == 0).then_some(single),
            (Step::Filter { field, value }, Value::Array(items)) => {
                items.iter().find(|item| filter_matches(item, field, value))
            }
            (Step::Filter { field, value }, single) => {
                filter_matches(single, field, value).then_some(single)
            }
        };
        match next {
            Some(value) => current = value,
            None => return Ok(None),
        }
    }
    match current {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        Value::Number(number) => Ok(Some(number.to_string())),
        Value::Bool(flag) => Ok(Some(flag.to_string())),
        other => Err(Mismatch {
            step: steps.len(),
            found: json_kind(other),
        }),
    }
}

/// Whether `item`'s dotted `field` is a scalar whose text is `value`.
fn filter_matches(item: &Value, field: &[String], value: &str) -> bool {
    let mut current = item;
    for name in field {
        match current.get(name.as_str()) {
            Some(next) => current = next,
            None => return false,
        }
    }
    match current {
        Value::String(text) => text == value,
        Value::Number(number) => number.to_string() == value,
        Value::Bool(flag) => value == flag.to_string(),
        _ => false,
    }
}

/// A resource of the pool.
#[derive(Debug)]
struct Pooled {
    /// The document it came from.
    document: usize,
    /// Its `resourceType`.
    kind: String,
    /// Its `id`, if it has one.
    id: Option<String>,
    /// The resource.
    value: Value,
}

/// Where a row's patient is.
#[derive(Debug, Clone)]
enum PatientLink {
    /// At this index of the pool.
    Found(usize),
    /// The row has no `subject.reference` or `patient.reference`.
    NoReference,
    /// The reference names no Patient of the documents.
    Unresolved(String),
    /// The reference names a Patient in several other documents: which one is meant
    /// cannot be told, and guessing would attribute data to the wrong patient.
    Ambiguous(String),
}

/// Where in a document a value is, for messages.
#[derive(Debug, Clone, Copy)]
struct Place {
    /// The JSON value of the document (1 = the first; NDJSON has one per line).
    item: usize,
    /// The entry of a Bundle (1 = the first).
    entry: Option<usize>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JSON value {}", self.item)?;
        if let Some(entry) = self.entry {
            write!(f, ", Bundle entry {entry}")?;
        }
        Ok(())
    }
}

/// The resources of all documents, and an index by reference.
#[derive(Debug, Default)]
struct Pool {
    resources: Vec<Pooled>,
    /// `fullUrl` and `Type/id` → indexes into `resources` (every resource so named).
    by_reference: FxHashMap<String, Vec<usize>>,
}

impl Pool {
    /// Adds the resources of one document.
    fn read(&mut self, document: usize, bytes: &[u8]) -> Result<(), AnonError> {
        const BOM: &[u8] = &[0xEF, 0xBB, 0xBF];
        let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
        let values = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
        for (index, value) in values.enumerate() {
            let value = value.map_err(|source| AnonError::Json { document, source })?;
            let place = Place {
                item: index + 1,
                entry: None,
            };
            self.add(document, place, value, None)?;
        }
        Ok(())
    }

    /// Adds a resource, or a Bundle's resources.
    fn add(
        &mut self,
        document: usize,
        place: Place,
        value: Value,
        full_url: Option<String>,
    ) -> Result<(), AnonError> {
        let problem = |problem: String| AnonError::FhirDocument { document, problem };
        let mut map: Map<String, Value> = match value {
            Value::Object(map) => map,
            other => {
                return Err(problem(format!(
                    "{place} is {}, not a FHIR resource (a JSON object)",
                    json_kind(&other)
                )))
            }
        };
        let Some(kind) = map
            .get("resourceType")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Err(problem(format!(
                "{place} has no `resourceType`, so it is not a FHIR resource"
            )));
        };
        if kind == "Bundle" {
            let entries = match map.remove("entry") {
                Some(Value::Array(entries)) => entries,
                _ => Vec::new(),
            };
            for (index, entry) in entries.into_iter().enumerate() {
                let place = Place {
                    item: place.item,
                    entry: Some(index + 1),
                };
                let mut entry = match entry {
                    Value::Object(entry) => entry,
                    other => {
                        return Err(problem(format!(
                            "{place} is {}, not an object",
                            json_kind(&other)
                        )))
                    }
                };
                let full_url = entry
                    .get("fullUrl")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                // Entries without a resource (a DELETE in a transaction, say) hold no data.
                if let Some(resource) = entry.remove("resource") {
                    self.add(document, place, resource, full_url)?;
                }
            }
            return Ok(());
        }
        let id = map.get("id").and_then(Value::as_str).map(str::to_owned);
        let index = self.resources.len();
        // A relative `fullUrl` is the `Type/id` itself: one entry per resource.
        let mut name = |key: String| {
            let named = self.by_reference.entry(key).or_default();
            if named.last() != Some(&index) {
                named.push(index);
            }
        };
        if let Some(url) = full_url {
            name(url);
        }
        if let Some(id) = &id {
            name(format!("{kind}/{id}"));
        }
        self.resources.push(Pooled {
            document,
            kind,
            id,
            value: Value::Object(map),
        });
        Ok(())
    }

    /// The Patient a row refers to.
    fn patient_of(&self, row: &Pooled) -> PatientLink {
        let reference = ["subject", "patient"].into_iter().find_map(|field| {
            row.value
                .get(field)
                .and_then(|reference| reference.get("reference"))
                .and_then(Value::as_str)
        });
        let Some(reference) = reference else {
            return PatientLink::NoReference;
        };
        let reference = reference.trim();
        let patients: Vec<usize> = self
            .resolve(reference)
            .iter()
            .copied()
            .filter(|&i| self.resources[i].kind == "Patient")
            .collect();
        // The row's own document first (a bundle's references are its own), then any
        // other, if only one has it.
        let same: Vec<usize> = patients
            .iter()
            .copied()
            .filter(|&i| self.resources[i].document == row.document)
            .collect();
        match (same.as_slice(), patients.as_slice()) {
            ([one], _) => PatientLink::Found(*one),
            ([], [one]) => PatientLink::Found(*one),
            ([], []) => PatientLink::Unresolved(reference.to_owned()),
            _ => PatientLink::Ambiguous(reference.to_owned()),
        }
    }

    /// The resources a reference names: a `fullUrl`, `urn:uuid:ID` (a Patient with that
    /// id), `Type/ID`, or a URL ending in `Type/ID` (with or without `/_history/N`).
    fn resolve(&self, reference: &str) -> &[usize] {
        let found = |key: &str| self.by_reference.get(key).map(Vec::as_slice);
        if let Some(found) = found(reference) {
            return found;
        }
        if let Some(id) = reference.strip_prefix("urn:uuid:") {
            return found(&format!("Patient/{id}")).unwrap_or(&[]);
        }
        let reference = reference.split("/_history/").next().unwrap_or(reference);
        let mut parts = reference.rsplit('/');
        match (parts.next(), parts.next()) {
            (Some(id), Some(kind)) => found(&format!("{kind}/{id}")).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Names a row (and its patient, when the path went there) for messages.
    fn describe(
        &self,
        row: &Pooled,
        ordinal: usize,
        through_patient: bool,
        link: Option<&PatientLink>,
    ) -> String {
        let mut out = match &row.id {
            Some(id) => format!("{}/{id}", row.kind),
            None => format!("{} number {} (which has no id)", row.kind, ordinal + 1),
        };
        if through_patient {
            match link {
                Some(PatientLink::Found(index)) => match &self.resources[*index].id {
                    Some(id) => out.push_str(&format!(", in its patient Patient/{id}")),
                    None => out.push_str(", in its patient (which has no id)"),
                },
                Some(PatientLink::Unresolved(reference)) => out.push_str(&format!(
                    ", whose patient `{reference}` is not in the documents"
                )),
                Some(PatientLink::Ambiguous(reference)) => out.push_str(&format!(
                    ", whose patient `{reference}` is in several documents (which one is \
                     meant cannot be told)"
                )),
                Some(PatientLink::NoReference) | None => out.push_str(
                    ", which has no patient reference (`subject.reference` or \
                     `patient.reference`)",
                ),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::MappingColumn;

    const BUNDLE: &str = "fhir/synthea-bundle-a.json";
    const PATIENTS: &str = "fhir/Patient.ndjson";
    const PROCEDURES: &str = "fhir/Procedure.ndjson";

    /// The shared test data `rel` (`medmesh_testkit::shared_data` says where it is
    /// missing).
    fn read(rel: &str) -> Vec<u8> {
        std::fs::read(medmesh_testkit::shared_data(rel)).unwrap()
    }

    fn mapping(rows: &str, columns: &[(&str, &str)]) -> Mapping {
        Mapping {
            format: Format::Fhir,
            rows: Some(rows.to_owned()),
            columns: columns
                .iter()
                .map(|&(name, path)| MappingColumn::new(name, path))
                .collect(),
        }
    }

    /// The bundle's resources of one type, found by serde_json alone.
    fn resources_of<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| &entry["resource"])
            .filter(|resource| resource["resourceType"] == kind)
            .collect()
    }

    #[test]
    fn observations_are_joined_to_their_patient_in_a_bundle() {
        let bytes = read(BUNDLE);
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        let observations = resources_of(&json, "Observation");
        assert_eq!(observations.len(), 187);
        let m = mapping(
            "Observation",
            &[
                ("id", "id"),
                ("zip", "patient.address[0].postalCode"),
                ("birth", "patient.birthDate"),
                ("gender", "patient.gender"),
                ("code", "code.coding[system=http://loinc.org].code"),
                ("value", "valueQuantity.value"),
                ("unit", "valueQuantity.unit"),
            ],
        );
        let table = fhir_table(&[&bytes], &m).unwrap();
        assert_eq!(table.len(), observations.len());
        assert_eq!(
            table.row(0)[..5],
            [
                "9169c47c-a9d6-4e34-90fc-5f3b2a939984",
                "02718",
                "1945-12-10",
                "male",
                "8302-2"
            ]
        );
        let height = table.column("value").unwrap().value(0);
        assert!(height.starts_with("173.90189"), "{height}");
        assert_eq!(
            height,
            observations[0]["valueQuantity"]["value"].to_string()
        );
        assert_eq!(table.column("unit").unwrap().value(0), "cm");
        // One patient: every row has the same patient columns.
        assert_eq!(table.column("zip").unwrap().dictionary(), ["02718"]);
        assert_eq!(table.column("gender").unwrap().dictionary(), ["male"]);
        for (row, observation) in observations.iter().enumerate() {
            assert_eq!(
                table.column("id").unwrap().value(row),
                observation["id"].as_str().unwrap()
            );
            assert_eq!(
                table.column("code").unwrap().value(row),
                observation["code"]["coding"][0]["code"].as_str().unwrap()
            );
        }
        // Blood pressures (components) and smoking status (a CodeableConcept) have no
        // valueQuantity: missing values.
        let without_quantity = observations
            .iter()
            .filter(|o| o.get("valueQuantity").is_none())
            .count();
        assert_eq!(without_quantity, 20);
        let values = table.column("value").unwrap();
        let empty = (0..table.len())
            .filter(|&r| values.value(r).is_empty())
            .count();
        assert_eq!(empty, without_quantity);
    }

    #[test]
    fn filters_pick_the_element_whose_field_matches() {
        let bytes = read(BUNDLE);
        let m = mapping(
            "Patient",
            &[
                ("ssn", "identifier[system=http://hl7.org/fhir/sid/us-ssn].value"),
                ("ssn-by-type", "identifier[type.text=Social Security Number].value"),
                ("mrn", "identifier[type.coding[0].code=MR].value"),
                (
                    "maiden",
                    "extension[url=http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName].valueString",
                ),
                ("family", "name[use=official].family"),
                ("given", "name[0].given[0]"),
                ("gender", "patient.gender"),
                ("twin", "multipleBirthBoolean"),
                ("none", "identifier[system=urn:nothing].value"),
                ("race", "extension[url=http://hl7.org/fhir/us/core/StructureDefinition/us-core-race].extension[url=ombCategory].valueCoding.code"),
            ],
        );
        // `[type.coding[0].code=MR]` is not allowed: filter fields take no indexes.
        let err = fhir_table(&[&bytes], &m).unwrap_err();
        match &err {
            AnonError::MappingPath { column, .. } => assert_eq!(column, "mrn"),
            other => panic!("unexpected {other}"),
        }
        let mut m = m;
        m.columns.retain(|c| c.name != "mrn");
        let table = fhir_table(&[&bytes], &m).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.row(0),
            [
                "999-93-7537",
                "999-93-7537",
                "Deadra347 Borer986",
                "Brekke496",
                "Aaron697",
                "male",
                "false",
                "",
                "2106-3"
            ]
        );
    }

    #[test]
    fn a_filter_on_a_codeable_concept_value() {
        let bytes = read(BUNDLE);
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        let smoking = resources_of(&json, "Observation")
            .into_iter()
            .filter(|o| o.get("valueCodeableConcept").is_some())
            .count();
        let m = mapping(
            "Observation",
            &[(
                "answer",
                "valueCodeableConcept.coding[system=http://snomed.info/sct].code",
            )],
        );
        let table = fhir_table(&[&bytes], &m).unwrap();
        let answers = table.column("answer").unwrap();
        assert_eq!(answers.dictionary()[..2], ["", "266919005"]);
        let answered = (0..table.len())
            .filter(|&r| !answers.value(r).is_empty())
            .count();
        assert_eq!(answered, smoking);
        assert_eq!(answered, 10);
    }

    #[test]
    fn procedures_join_patients_from_another_document() {
        let procedures = read(PROCEDURES);
        let patients = read(PATIENTS);
        let m = mapping(
            "Procedure",
            &[
                ("id", "id"),
                ("code", "code.coding[0].code"),
                ("start", "performedPeriod.start"),
                ("gender", "patient.gender"),
                ("birth", "patient.birthDate"),
                ("zip", "patient.address[0].postalCode"),
            ],
        );
        // The patients come second: resources are pooled before rows are built.
        let table = fhir_table(&[&procedures, &patients], &m).unwrap();
        assert_eq!(table.len(), 799);
        assert_eq!(
            table.row(0),
            [
                "bda77937-d841-4306-9039-1b04b7de9d77",
                "180325003",
                "2010-11-20T02:52:44-05:00",
                "female",
                "1942-07-04",
                "02368"
            ]
        );
        assert_eq!(
            table.row(798),
            [
                "814f2ede-9b68-471d-aaf4-8c2d2c5e1e7b",
                "430193006",
                "2020-03-02T12:05:53-05:00",
                "male",
                "1966-02-07",
                "01832"
            ]
        );
        let gender = table.column("gender").unwrap();
        let counts = gender.frequencies();
        assert_eq!(counts[gender.code_of("female").unwrap() as usize], 519);
        assert_eq!(counts[gender.code_of("male").unwrap() as usize], 280);
        // Eleven of the 25 patients have no postal code; their 401 procedures miss it.
        let zip = table.column("zip").unwrap();
        assert_eq!(zip.frequencies()[zip.code_of("").unwrap() as usize], 401);
    }

    #[test]
    fn a_required_field_that_is_missing_names_the_resource_and_path() {
        let procedures = read(PROCEDURES);
        let patients = read(PATIENTS);
        let mut m = mapping("Procedure", &[("id", "id")]);
        m.columns
            .push(MappingColumn::new("zip", "patient.address[0].postalCode").required());
        let err = fhir_table(&[&procedures, &patients], &m).unwrap_err();
        match &err {
            AnonError::MissingRequired {
                column,
                path,
                record,
            } => {
                assert_eq!(column, "zip");
                assert_eq!(path, "patient.address[0].postalCode");
                assert!(
                    record.contains("Procedure/324218d6-c285-470f-aa99-4d717298cb3d"),
                    "{record}"
                );
                assert!(
                    record.contains("Patient/62e03ae7-079c-4eda-9b5a-29440d3a015a"),
                    "{record}"
                );
            }
            other => panic!("unexpected {other}"),
        }
        // Without the patients, the reference resolves to nothing.
        let err = fhir_table(&[&procedures], &m).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("Procedure/bda77937-d841-4306-9039-1b04b7de9d77"),
            "{message}"
        );
        assert!(
            message
                .contains("Patient/fbfec681-d357-4b28-b1d2-5db6434c7846` is not in the documents"),
            "{message}"
        );
    }

    #[test]
    fn a_path_ending_at_an_array_or_object_is_an_error() {
        let bytes = read(BUNDLE);
        for (path, expected) in [
            ("code.coding", "it reaches an array"),
            ("patient.name[0].given", "it reaches an array"),
            ("valueQuantity", "it reaches an object"),
            (
                "patient.address.postalCode",
                "`patient.address` is an array",
            ),
            (
                "status.text",
                "`status` is a string, which has no field `text`",
            ),
        ] {
            let m = mapping("Observation", &[("c", path)]);
            let err = fhir_table(&[&bytes], &m).unwrap_err();
            match &err {
                AnonError::Extract {
                    column,
                    path: reported,
                    record,
                    problem,
                } => {
                    assert_eq!(column, "c");
                    assert_eq!(reported, path);
                    assert!(
                        record.starts_with("Observation/9169c47c-a9d6-4e34-90fc-5f3b2a939984"),
                        "{record}"
                    );
                    assert!(problem.contains(expected), "{path}: {problem}");
                }
                other => panic!("{path}: unexpected {other}"),
            }
        }
    }

    #[test]
    fn row_types_formats_and_documents_are_checked() {
        let bytes = read(BUNDLE);
        let err = fhir_table(&[&bytes], &mapping("Observations", &[("id", "id")])).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("`Observations`"), "{message}");
        assert!(
            message.contains("Patient, Observation, Condition, Procedure"),
            "{message}"
        );
        let err = fhir_table(&[&bytes], &mapping("observation", &[("id", "id")])).unwrap_err();
        assert!(
            err.to_string().contains("did you mean `Observation`"),
            "{err}"
        );
        let mut no_rows = mapping("Patient", &[("id", "id")]);
        no_rows.rows = None;
        assert!(matches!(
            fhir_table(&[&bytes], &no_rows),
            Err(AnonError::Mapping(_))
        ));

        let m = mapping("Patient", &[("id", "id")]);
        let err = fhir_table(&[&bytes, b"{\"resourceType\": \"Patient\", "], &m).unwrap_err();
        assert!(matches!(err, AnonError::Json { document: 2, .. }), "{err}");
        let err = fhir_table(&[b"{\"id\": \"x\"}"], &m).unwrap_err();
        assert!(
            matches!(err, AnonError::FhirDocument { document: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("resourceType"), "{err}");
    }

    #[test]
    fn single_resources_and_ndjson_references() {
        let observation = br#"{"resourceType": "Observation", "id": "o1",
            "subject": {"reference": "http://example.org/fhir/Patient/p1/_history/3"},
            "valueQuantity": {"value": 7}, "valueBoolean": true}"#;
        let patient = br#"

            {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"}
            {"resourceType": "Patient", "id": "p2", "birthDate": "1980-01-01"}
        "#;
        let m = mapping(
            "Observation",
            &[
                ("birth", "patient.birthDate"),
                ("value", "valueQuantity.value"),
                ("flag", "valueBoolean"),
                ("first", "valueQuantity[0].value"),
                ("second", "valueQuantity[1].value"),
            ],
        );
        let table = fhir_table(&[observation, patient], &m).unwrap();
        assert_eq!(table.row(0), ["1970-01-01", "7", "true", "7", ""]);
        let patients = fhir_table(
            &[observation, patient],
            &mapping("Patient", &[("id", "id"), ("birth", "patient.birthDate")]),
        )
        .unwrap();
        assert_eq!(patients.len(), 2);
        assert_eq!(patients.row(1), ["p2", "1980-01-01"]);
    }

    #[test]
    fn paths_parse_with_values_up_to_the_closing_bracket() {
        assert_eq!(
            parse_path("code.coding[system=http://loinc.org].code").unwrap(),
            FhirPath {
                via_patient: false,
                steps: vec![
                    Step::Field("code".into()),
                    Step::Field("coding".into()),
                    Step::Filter {
                        field: vec!["system".into()],
                        value: "http://loinc.org".into()
                    },
                    Step::Field("code".into()),
                ],
            }
        );
        assert_eq!(
            parse_path("patient.address[0].line[1]").unwrap(),
            FhirPath {
                via_patient: true,
                steps: vec![
                    Step::Field("address".into()),
                    Step::Index(0),
                    Step::Field("line".into()),
                    Step::Index(1),
                ],
            }
        );
        assert_eq!(
            parse_path("extension[url=urn:a.b/c=d?e].valueString")
                .unwrap()
                .steps[1],
            Step::Filter {
                field: vec!["url".into()],
                value: "urn:a.b/c=d?e".into()
            }
        );
        for bad in [
            "", "patient.", "a.", "a..b", "[0]", "a[", "a[]", "a[x]", "a[=x]", "a[x=]", "a]b",
            "a[0]b", "a=b",
        ] {
            assert!(parse_path(bad).is_err(), "`{bad}` should not parse");
        }
    }

    #[test]
    fn a_patient_in_two_other_documents_is_refused_not_guessed() {
        let patient = |zip: &str| {
            format!(
                r#"{{"resourceType":"Patient","id":"p1","address":[{{"postalCode":"{zip}"}}]}}"#
            )
        };
        let observation =
            r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#;
        let mapping = Mapping {
            format: crate::extract::Format::Fhir,
            rows: Some("Observation".into()),
            columns: vec![MappingColumn::new("zip", "patient.address[0].postalCode")],
        };
        let (a, b) = (patient("02139"), patient("10001"));
        // Its own document's patient wins over another's.
        let own = format!("{a}\n{observation}");
        let table = fhir_table(&[own.as_bytes(), b.as_bytes()], &mapping).unwrap();
        assert_eq!(table.row(0), ["02139"]);
        // In two other documents: refused.
        let err = fhir_table(
            &[a.as_bytes(), b.as_bytes(), observation.as_bytes()],
            &mapping,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("several documents"), "{err}");
    }
}
