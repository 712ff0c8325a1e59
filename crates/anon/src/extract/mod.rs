//! Extraction: an anonymization input [`Table`] built from medical records by a declared
//! [`Mapping`] — which field of which record becomes which column.
//!
//! A mapping is usually a TOML file:
//!
//! ```toml
//! [mapping]
//! format = "fhir"            # fhir | hl7v2 | csv
//! rows = "Observation"       # one row per resource of this type
//!
//! [[mapping.columns]]
//! name = "zip"
//! path = "patient.address[0].postalCode"   # the row's patient, followed by reference
//! required = true                          # a record without it is an error
//!
//! [[mapping.columns]]
//! name = "code"
//! path = "code.coding[system=http://loinc.org].code"
//!
//! [[mapping.columns]]
//! name = "value"
//! path = "valueQuantity.value"
//! ```
//!
//! - **`format = "fhir"`** ([`fhir_table`]): FHIR R4 JSON — Bundles, single resources or
//!   NDJSON. `rows` is a resource type (Patient, Observation, Condition, Procedure,
//!   Encounter, MedicationRequest, Immunization, AllergyIntolerance, DiagnosticReport);
//!   paths are dotted field names with `[N]` indexes (from 0) and `[field=value]` filters,
//!   and a leading `patient.` continues at the row's patient. See [`fhir_table`].
//! - **`format = "hl7v2"`** ([`hl7_table`]): HL7 v2 messages. `rows` is a segment id
//!   (`PID`, `OBX`, `DG1`…) or `message`; paths are `SEG-FIELD[REP].COMPONENT.SUB`, numbered
//!   as HL7 numbers them (from 1), e.g. `PID-5.1`, `OBX-5`, `PID-3[2].1`. See [`hl7_table`].
//! - **`format = "csv"`** ([`csv_table`]): a table already read by [`Table::from_csv`];
//!   `path` names the source column, so the mapping selects and renames columns. `rows`
//!   is not used.
//!
//! Every value is text; a field that is absent becomes the empty string (a missing
//! value), unless its column says `required = true`. Errors name the mapping column, its
//! path and the record at fault.
//!
//! ```
//! use medmesh_anon::extract::{hl7_table, Mapping};
//!
//! let mapping = Mapping::from_toml(
//!     r#"
//!     [mapping]
//!     format = "hl7v2"
//!     rows = "PID"
//!     [[mapping.columns]]
//!     name = "family"
//!     path = "PID-5.1"
//!     [[mapping.columns]]
//!     name = "birth"
//!     path = "PID-7"
//!     "#,
//! )?;
//! let message = "MSH|^~\\&|LAB|HOSP|||20240101||ADT^A01|1|P|2.5\rPID|1||42||Doe^Jane||19800101|F";
//! let table = hl7_table(&[message], &mapping)?;
//! assert_eq!(table.row(0), ["Doe", "19800101"]);
//! # Ok::<(), medmesh_anon::AnonError>(())
//! ```

mod fhir;
mod hl7;

use std::fmt;

use serde::Deserialize;

pub use fhir::fhir_table;
pub use hl7::hl7_table;

use crate::error::AnonError;
use crate::table::Table;

/// The kind of records a mapping reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// FHIR R4 JSON: Bundles, single resources, NDJSON ([`fhir_table`]).
    Fhir,
    /// HL7 v2 messages ([`hl7_table`]); `"hl7"` is accepted too.
    #[serde(alias = "hl7")]
    Hl7v2,
    /// A CSV table ([`csv_table`]).
    Csv,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fhir => "fhir",
            Self::Hl7v2 => "hl7v2",
            Self::Csv => "csv",
        })
    }
}

/// Which records become rows and which of their fields become columns.
///
/// Read it from TOML with [`Mapping::from_toml`] (the module docs show a file), or
/// embed it in a larger file under a `mapping` key: it implements [`Deserialize`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The kind of records.
    pub format: Format,
    /// What a row is: a FHIR resource type, an HL7 segment id or `message`; not used
    /// for CSV.
    #[serde(default)]
    pub rows: Option<String>,
    /// The columns of the table, in order.
    pub columns: Vec<MappingColumn>,
}

/// One column of the extracted table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingColumn {
    /// The column's name in the table.
    pub name: String,
    /// Where its value is in a record (the syntax depends on the format).
    pub path: String,
    /// A record without a value here is an error instead of a missing value.
    #[serde(default)]
    pub required: bool,
}

impl MappingColumn {
    /// A column that may have missing values.
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            required: false,
        }
    }

    /// The same column, required.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
}

/// A TOML file whose `[mapping]` table is a mapping (other tables are left alone).
#[derive(Deserialize)]
struct MappingFile {
    mapping: Mapping,
}

impl Mapping {
    /// Reads a mapping from the `[mapping]` table of a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, AnonError> {
        toml::from_str::<MappingFile>(text)
            .map(|file| file.mapping)
            .map_err(AnonError::MappingToml)
    }

    /// Checks that the mapping is for `format` and has columns.
    fn check_format(&self, format: Format) -> Result<(), AnonError> {
        if self.format != format {
            return Err(AnonError::Mapping(format!(
                "the mapping says format = \"{}\", but the records given are {format} \
                 (format is one of fhir, hl7v2, csv)",
                self.format
            )));
        }
        if self.columns.is_empty() {
            return Err(AnonError::Mapping(
                "the mapping has no columns (add [[mapping.columns]] with a name and a path)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The column names, in order.
    fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }
}

/// Selects and renames the columns of a CSV table: each mapping column takes the source
/// column its `path` names. A `required` column must have no empty value.
pub fn csv_table(table: &Table, mapping: &Mapping) -> Result<Table, AnonError> {
    mapping.check_format(Format::Csv)?;
    let mut out = Table::default();
    for column in &mapping.columns {
        if column.name.is_empty() {
            return Err(AnonError::EmptyColumnName);
        }
        let source = table
            .column(column.path.trim())
            .map_err(|_| AnonError::Extract {
                column: column.name.clone(),
                path: column.path.clone(),
                record: "the CSV table".into(),
                problem: format!(
                    "no such source column (the table has: {})",
                    table.names().join(", ")
                ),
            })?;
        if column.required {
            let empty = source.code_of("");
            if let Some(row) = source.codes().iter().position(|&code| Some(code) == empty) {
                return Err(AnonError::MissingRequired {
                    column: column.name.clone(),
                    path: column.path.clone(),
                    record: format!("CSV row {} (1 = the first data row)", row + 1),
                });
            }
        }
        out.add_column(&column.name, source.clone())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADULT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/adult/arx/adult.csv"
    );

    const EXAMPLE: &str = r#"
        [mapping]
        format = "fhir"
        rows = "Observation"

        [[mapping.columns]]
        name = "zip"
        path = "patient.address[0].postalCode"
        required = true

        [[mapping.columns]]
        name = "code"
        path = "code.coding[system=http://loinc.org].code"

        [[mapping.columns]]
        name = "value"
        path = "valueQuantity.value"
    "#;

    #[test]
    fn the_documented_mapping_parses() {
        let mapping = Mapping::from_toml(EXAMPLE).unwrap();
        assert_eq!(
            mapping,
            Mapping {
                format: Format::Fhir,
                rows: Some("Observation".into()),
                columns: vec![
                    MappingColumn::new("zip", "patient.address[0].postalCode").required(),
                    MappingColumn::new("code", "code.coding[system=http://loinc.org].code"),
                    MappingColumn::new("value", "valueQuantity.value"),
                ],
            }
        );
    }

    #[test]
    fn other_tables_beside_the_mapping_are_ignored() {
        let text = format!("[policy]\nk = 5\n{EXAMPLE}");
        assert_eq!(Mapping::from_toml(&text).unwrap().columns.len(), 3);
    }

    #[test]
    fn an_unknown_format_lists_the_valid_ones() {
        let err = Mapping::from_toml(
            "[mapping]\nformat = \"xml\"\n[[mapping.columns]]\nname = \"a\"\npath = \"b\"\n",
        )
        .unwrap_err();
        assert!(matches!(err, AnonError::MappingToml(_)), "{err}");
        let message = err.to_string();
        for valid in ["fhir", "hl7v2", "csv"] {
            assert!(message.contains(valid), "{message}");
        }
    }

    #[test]
    fn hl7_is_an_alias_and_misspelt_keys_are_errors() {
        let mapping = Mapping::from_toml(
            "[mapping]\nformat = \"hl7\"\nrows = \"PID\"\n\
             [[mapping.columns]]\nname = \"a\"\npath = \"PID-5\"\n",
        )
        .unwrap();
        assert_eq!(mapping.format, Format::Hl7v2);
        let err = Mapping::from_toml(
            "[mapping]\nformat = \"csv\"\n[[mapping.columns]]\nname = \"a\"\npaht = \"b\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("paht"), "{err}");
    }

    fn csv_mapping(columns: Vec<MappingColumn>) -> Mapping {
        Mapping {
            format: Format::Csv,
            rows: None,
            columns,
        }
    }

    #[test]
    fn csv_columns_are_selected_and_renamed() {
        let file = std::fs::File::open(ADULT).unwrap_or_else(|e| {
            panic!("test data {ADULT} is missing ({e}): it ships in shared/ beside the repository")
        });
        let adult = Table::from_csv(file, b';').unwrap();
        let mapping = csv_mapping(vec![
            MappingColumn::new("age", "age").required(),
            MappingColumn::new("gender", "sex"),
            MappingColumn::new("zip-like", "native-country"),
        ]);
        let table = csv_table(&adult, &mapping).unwrap();
        assert_eq!(table.names(), ["age", "gender", "zip-like"]);
        assert_eq!(table.len(), 30162);
        assert_eq!(table.row(0), ["39", "Male", "United-States"]);
        assert_eq!(table.row(1), ["50", "Male", "United-States"]);
        assert_eq!(
            table.column("gender").unwrap().dictionary(),
            adult.column("sex").unwrap().dictionary()
        );
    }

    #[test]
    fn csv_errors_name_the_column() {
        let source = Table::from_csv("id,zip\n1,02139\n2,\n".as_bytes(), b',').unwrap();
        let err = csv_table(
            &source,
            &csv_mapping(vec![MappingColumn::new("postcode", "postal")]),
        )
        .unwrap_err();
        match &err {
            AnonError::Extract {
                column,
                path,
                problem,
                ..
            } => {
                assert_eq!(column, "postcode");
                assert_eq!(path, "postal");
                assert!(problem.contains("id, zip"), "{problem}");
            }
            other => panic!("unexpected {other}"),
        }
        let err = csv_table(
            &source,
            &csv_mapping(vec![MappingColumn::new("zip", "zip").required()]),
        )
        .unwrap_err();
        match &err {
            AnonError::MissingRequired { column, record, .. } => {
                assert_eq!(column, "zip");
                assert!(record.contains("CSV row 2"), "{record}");
            }
            other => panic!("unexpected {other}"),
        }
        let optional = csv_table(
            &source,
            &csv_mapping(vec![MappingColumn::new("zip", "zip")]),
        )
        .unwrap();
        assert_eq!(optional.column("zip").unwrap().dictionary(), ["02139", ""]);
    }

    #[test]
    fn the_wrong_format_and_no_columns_are_errors() {
        let source = Table::from_csv("a\n1\n".as_bytes(), b',').unwrap();
        let mut mapping = csv_mapping(vec![MappingColumn::new("a", "a")]);
        mapping.format = Format::Fhir;
        let err = csv_table(&source, &mapping).unwrap_err();
        assert!(err.to_string().contains("format = \"fhir\""), "{err}");
        let err = csv_table(&source, &csv_mapping(Vec::new())).unwrap_err();
        assert!(err.to_string().contains("no columns"), "{err}");
    }
}
