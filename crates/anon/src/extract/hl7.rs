//! HL7 v2: one row per segment of a type (or per message), one column per path.
//!
//! Messages: segments end with `\r`, `\n` or `\r\n` (MLLP framing bytes and blank lines
//! are ignored), every message starts with `MSH`, and a text may hold several. MSH-1 is
//! the field separator and MSH-2 the encoding characters — component, repetition,
//! escape, subcomponent, usually `^~\&` — and each message uses its own. Batch envelope
//! segments (FHS, BHS, BTS, FTS) are skipped.
//!
//! Paths are `SEG-FIELD`, `SEG-FIELD.COMPONENT` or `SEG-FIELD.COMPONENT.SUBCOMPONENT`,
//! numbered from 1 as HL7 numbers them (so `MSH-9.2` is the trigger event, `MSH-1` the
//! separator itself), with an optional repetition `SEG-FIELD[R]` (from 1) before the
//! component: `PID-5.1`, `PID-7`, `OBX-5`, `DG1-3.1`, `PID-3[2].1`.
//!
//! - A repeating field gives its first repetition unless the path names another.
//! - A path without a component gives the **first component** (a `PID-2` of
//!   `0493575^^^2^ID 1` gives `0493575`), and one without a subcomponent the first
//!   subcomponent: each path names one value, never a `^`-joined composite.
//! - Escape sequences are decoded after splitting: `\F\ \S\ \T\ \R\ \E\` give the message's
//!   own delimiters, `\.br\` a line break, `\Xhh…\` the bytes `hh…` (UTF-8, else Latin-1);
//!   `\H\` and `\N\` (highlighting) are dropped; any other sequence is kept as written.
//! - Values are trimmed of surrounding spaces (as [`crate::Table::from_csv`] trims); an
//!   empty value and HL7's explicit null `""` are a missing value (the empty string), or
//!   an error when the column is `required`.
//!
//! With one row per segment (`rows = "OBX"`), a path naming the row's segment type reads
//! the row's segment; a path naming another segment reads, in the same message, the
//! nearest such segment before the row's (an OBX's own OBR, the PID of its patient
//! group), or, when there is none before, the first one after. For segments that occur
//! once per message, such as PID and MSH, this is simply that segment. With
//! `rows = "message"`, every path reads the first segment of its type.

use std::borrow::Cow;

use super::{Format, Mapping};
use crate::error::AnonError;
use crate::table::Table;

/// Builds a table from HL7 v2 texts: one row per segment of the type the mapping's
/// `rows` names (`PID`, `OBX`, `DG1`…), or one per message for `rows = "message"`, in
/// the order the texts hold them. Each text may hold several messages. The path
/// language is described in the module docs.
pub fn hl7_table(messages: &[&str], mapping: &Mapping) -> Result<Table, AnonError> {
    mapping.check_format(Format::Hl7v2)?;
    let rows = Rows::parse(mapping.rows.as_deref())?;
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
    let mut parsed = Vec::new();
    for (index, text) in messages.iter().enumerate() {
        split_messages(index + 1, text, &mut parsed)?;
    }

    let mut table = Table::with_columns(&mapping.column_names())?;
    let mut values: Vec<String> = Vec::with_capacity(paths.len());
    for message in &parsed {
        match &rows {
            Rows::Message => {
                message.fill(None, mapping, &paths, &mut values)?;
                table.push_row(&values)?;
            }
            Rows::Segment(id) => {
                let positions = (0..message.segments.len())
                    .filter(|&position| message.segments[position].id == id.as_str());
                for (occurrence, position) in positions.enumerate() {
                    let row = Some((position, occurrence + 1));
                    message.fill(row, mapping, &paths, &mut values)?;
                    table.push_row(&values)?;
                }
            }
        }
    }
    Ok(table)
}

/// What a row is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rows {
    /// One row per message.
    Message,
    /// One row per segment with this id.
    Segment(String),
}

impl Rows {
    /// Reads the mapping's `rows`.
    fn parse(rows: Option<&str>) -> Result<Self, AnonError> {
        const EXPECTED: &str = "`message` (one row per message) or a segment id — three \
             capital letters or digits, such as PID, PV1, OBR, OBX, DG1, NK1 — (one row per \
             segment of that type)";
        match rows.map(str::trim) {
            None => Err(AnonError::Mapping(format!(
                "`rows` is missing: for format = \"hl7v2\" it is {EXPECTED}"
            ))),
            Some(rows) if rows.eq_ignore_ascii_case("message") => Ok(Self::Message),
            Some(rows) => {
                let id = rows.to_ascii_uppercase();
                if is_segment_id(&id) {
                    Ok(Self::Segment(id))
                } else {
                    Err(AnonError::Mapping(format!(
                        "unknown HL7 row type `{rows}`; rows is {EXPECTED}"
                    )))
                }
            }
        }
    }
}

/// Whether `id` is a segment id: a capital letter, then two capital letters or digits.
fn is_segment_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 3
        && bytes[0].is_ascii_uppercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hl7Path {
    /// The segment id, upper case.
    segment: String,
    /// Field number (from 1).
    field: usize,
    /// Repetition (from 1).
    repetition: usize,
    /// Component (from 1), if named.
    component: Option<usize>,
    /// Subcomponent (from 1), if named.
    subcomponent: Option<usize>,
}

/// Parses `SEG-FIELD[REP].COMPONENT.SUBCOMPONENT`; the error says what is wrong.
fn parse_path(text: &str) -> Result<Hl7Path, String> {
    const SHAPE: &str = "a path is SEG-FIELD, SEG-FIELD.COMPONENT or \
         SEG-FIELD.COMPONENT.SUBCOMPONENT, with an optional repetition SEG-FIELD[R], \
         e.g. PID-5.1, OBX-5, PID-3[2].1";
    let text = text.trim();
    let Some((segment, rest)) = text.split_once('-') else {
        return Err(format!("no `-` after the segment id ({SHAPE})"));
    };
    let segment = segment.trim().to_ascii_uppercase();
    if !is_segment_id(&segment) {
        return Err(format!(
            "`{segment}` is not a segment id: three capital letters or digits, the first a \
             letter ({SHAPE})"
        ));
    }
    let number = |part: &str, what: &str| -> Result<(usize, String), String> {
        let digits = part.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("the {what} number is missing ({SHAPE})"));
        }
        let value: usize = part[..digits]
            .parse()
            .map_err(|_| format!("the {what} number `{}` is too large", &part[..digits]))?;
        if value == 0 {
            return Err(format!(
                "the {what} number is 0, but HL7 numbers fields, repetitions, components and \
                 subcomponents from 1"
            ));
        }
        Ok((value, part[digits..].to_owned()))
    };
    let (field, rest) = number(rest, "field")?;
    let (repetition, rest) = match rest.strip_prefix('[') {
        Some(inner) => {
            let (repetition, after) = number(inner, "repetition")?;
            let Some(after) = after.strip_prefix(']') else {
                return Err(format!("the repetition `[{inner}` has no closing `]`"));
            };
            (repetition, after.to_owned())
        }
        None => (1, rest),
    };
    let (component, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let (component, after) = number(after, "component")?;
            (Some(component), after)
        }
        None => (None, rest),
    };
    // Without a component, `rest` cannot start with `.` here (the component took it).
    let (subcomponent, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let (subcomponent, after) = number(after, "subcomponent")?;
            (Some(subcomponent), after)
        }
        None => (None, rest),
    };
    if !rest.is_empty() {
        return Err(format!("unexpected `{rest}` at the end ({SHAPE})"));
    }
    Ok(Hl7Path {
        segment,
        field,
        repetition,
        component,
        subcomponent,
    })
}

/// A message's delimiters, from its MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delimiters {
    field: char,
    component: char,
    repetition: char,
    escape: char,
    subcomponent: char,
}

/// A segment: its id and its fields as split by the field separator (`fields[0]` is
/// the id; in MSH, `fields[1]` is MSH-2, since MSH-1 is the separator itself).
#[derive(Debug, Clone)]
struct Segment<'a> {
    id: &'a str,
    fields: Vec<&'a str>,
}

impl<'a> Segment<'a> {
    fn split(line: &'a str, separator: char) -> Self {
        let fields: Vec<&'a str> = line.split(separator).collect();
        Segment {
            id: fields.first().copied().unwrap_or_default(),
            fields,
        }
    }
}

/// One message.
#[derive(Debug, Clone)]
struct Message<'a> {
    /// 1 = the first message of all the texts.
    number: usize,
    delimiters: Delimiters,
    /// MSH-1, the field separator, as text.
    separator: &'a str,
    /// MSH first.
    segments: Vec<Segment<'a>>,
}

/// Splits one text into messages, appending them to `out`.
fn split_messages<'a>(
    input: usize,
    text: &'a str,
    out: &mut Vec<Message<'a>>,
) -> Result<(), AnonError> {
    let first = out.len();
    let lines = text
        .split(['\r', '\n'])
        .map(|line| line.trim_matches(['\u{0b}', '\u{1c}']).trim_start())
        .filter(|line| !line.trim_end().is_empty());
    for (index, line) in lines.enumerate() {
        let segment_number = index + 1;
        let problem = |problem: String| AnonError::Hl7 {
            input,
            segment: segment_number,
            problem,
        };
        if let Some(after) = line.strip_prefix("MSH") {
            let Some(field) = after.chars().next() else {
                return Err(problem(
                    "the MSH segment ends before its field separator (MSH-1)".into(),
                ));
            };
            let separator = &after[..field.len_utf8()];
            let encoding = after[field.len_utf8()..]
                .split(field)
                .next()
                .unwrap_or_default();
            let mut encoding = encoding.chars();
            let delimiters = Delimiters {
                field,
                component: encoding.next().unwrap_or('^'),
                repetition: encoding.next().unwrap_or('~'),
                escape: encoding.next().unwrap_or('\\'),
                subcomponent: encoding.next().unwrap_or('&'),
            };
            out.push(Message {
                number: out.len() + 1,
                delimiters,
                separator,
                segments: vec![Segment::split(line, field)],
            });
            continue;
        }
        if matches!(line.get(..3), Some("FHS" | "BHS" | "BTS" | "FTS")) {
            continue;
        }
        if out.len() == first {
            let id: String = line.chars().take(3).collect();
            return Err(problem(format!(
                "segment `{id}` comes before any MSH; every message starts with an MSH segment"
            )));
        }
        if let Some(message) = out.last_mut() {
            let segment = Segment::split(line, message.delimiters.field);
            message.segments.push(segment);
        }
    }
    Ok(())
}

impl<'a> Message<'a> {
    /// The segment a path reads: the row's own segment if it is of that type, else the
    /// nearest one before the row's, else the first one after (the first of the message
    /// when the row is the message).
    fn find(&self, id: &str, row: Option<usize>) -> Option<&Segment<'a>> {
        match row {
            None => self.segments.iter().find(|s| s.id == id),
            Some(position) => {
                let own = &self.segments[position];
                if own.id == id {
                    return Some(own);
                }
                self.segments[..position]
                    .iter()
                    .rev()
                    .find(|s| s.id == id)
                    .or_else(|| self.segments[position + 1..].iter().find(|s| s.id == id))
            }
        }
    }

    /// The value a path names in a segment, decoded and trimmed; `None` when it is
    /// absent, empty or `""`.
    fn value(&self, segment: &Segment<'a>, path: &Hl7Path) -> Option<String> {
        let d = &self.delimiters;
        if segment.id == "MSH" && path.field <= 2 {
            // MSH-1 and MSH-2 are the delimiters themselves: never split, never decoded.
            let raw = if path.field == 1 {
                self.separator
            } else {
                segment.fields.get(1).copied().unwrap_or_default()
            };
            let whole = path.repetition == 1
                && path.component.unwrap_or(1) == 1
                && path.subcomponent.unwrap_or(1) == 1;
            return (whole && !raw.is_empty()).then(|| raw.to_owned());
        }
        let index = if segment.id == "MSH" {
            path.field - 1
        } else {
            path.field
        };
        let raw = segment.fields.get(index)?;
        let repetition = raw.split(d.repetition).nth(path.repetition - 1)?;
        let component = repetition
            .split(d.component)
            .nth(path.component.unwrap_or(1) - 1)?;
        let subcomponent = component
            .split(d.subcomponent)
            .nth(path.subcomponent.unwrap_or(1) - 1)?
            .trim();
        if subcomponent.is_empty() || subcomponent == "\"\"" {
            return None;
        }
        let decoded = unescape(subcomponent, d);
        let decoded = decoded.trim();
        (!decoded.is_empty()).then(|| decoded.to_owned())
    }

    /// MSH-10, the message control id, if it has one.
    fn control_id(&self) -> Option<&'a str> {
        let id = self.segments.first()?.fields.get(9).copied()?.trim();
        (!id.is_empty()).then_some(id)
    }

    /// Names the message (and the row's segment) for messages.
    fn describe(&self, row: Option<(usize, usize)>) -> String {
        let mut out = format!("message {}", self.number);
        if let Some(id) = self.control_id() {
            out.push_str(&format!(" (MSH-10 `{id}`)"));
        }
        if let Some((position, occurrence)) = row {
            out.push_str(&format!(
                ", {} number {occurrence}",
                self.segments[position].id
            ));
        }
        out
    }

    /// Fills `values` with one row: the message, or its segment at `row` (position in
    /// the message, occurrence among segments of its type).
    fn fill(
        &self,
        row: Option<(usize, usize)>,
        mapping: &Mapping,
        paths: &[Hl7Path],
        values: &mut Vec<String>,
    ) -> Result<(), AnonError> {
        values.clear();
        for (column, path) in mapping.columns.iter().zip(paths) {
            let segment = self.find(&path.segment, row.map(|(position, _)| position));
            match segment.and_then(|segment| self.value(segment, path)) {
                Some(value) => values.push(value),
                None if column.required => {
                    let mut record = self.describe(row);
                    if segment.is_none() {
                        record.push_str(&format!(", which has no {} segment", path.segment));
                    }
                    return Err(AnonError::MissingRequired {
                        column: column.name.clone(),
                        path: column.path.clone(),
                        record,
                    });
                }
                None => values.push(String::new()),
            }
        }
        Ok(())
    }
}

/// Decodes escape sequences (see the module docs).
fn unescape<'t>(text: &'t str, d: &Delimiters) -> Cow<'t, str> {
    if !text.contains(d.escape) {
        return Cow::Borrowed(text);
    }
    let width = d.escape.len_utf8();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(d.escape) {
        out.push_str(&rest[..start]);
        let after = &rest[start + width..];
        let Some(end) = after.find(d.escape) else {
            // An escape character that nothing closes is kept as it is.
            out.push_str(&rest[start..]);
            return Cow::Owned(out);
        };
        match decode_escape(&after[..end], d) {
            Some(decoded) => out.push_str(&decoded),
            None => out.push_str(&rest[start..start + width + end + width]),
        }
        rest = &after[end + width..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// What one escape sequence (without its escape characters) stands for, if known.
fn decode_escape(code: &str, d: &Delimiters) -> Option<String> {
    let text = match code {
        "F" => d.field.to_string(),
        "S" => d.component.to_string(),
        "T" => d.subcomponent.to_string(),
        "R" => d.repetition.to_string(),
        "E" => d.escape.to_string(),
        "H" | "N" => String::new(),
        ".br" => "\n".to_owned(),
        _ => {
            let hex = code.strip_prefix('X')?;
            if hex.is_empty() {
                return None;
            }
            let bytes = hex
                .as_bytes()
                .chunks(2)
                .map(|pair| {
                    let pair = std::str::from_utf8(pair).ok().filter(|p| p.len() == 2)?;
                    u8::from_str_radix(pair, 16).ok()
                })
                .collect::<Option<Vec<u8>>>()?;
            String::from_utf8(bytes)
                .unwrap_or_else(|e| e.into_bytes().into_iter().map(char::from).collect())
        }
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::MappingColumn;

    const ADT: &str = "hl7v2/adt.hl7";
    const ORM: &str = "hl7v2/orm.hl7";
    const ORU: &str = "hl7v2/oru.hl7";
    const ORU_IMM: &str = "hl7v2/oru-imm.hl7";

    /// The shared test data `rel` (`medmesh_testkit::shared_data` says where it is
    /// missing).
    fn read(rel: &str) -> String {
        std::fs::read_to_string(medmesh_testkit::shared_data(rel)).unwrap()
    }

    fn mapping(rows: &str, columns: &[(&str, &str)]) -> Mapping {
        Mapping {
            format: Format::Hl7v2,
            rows: Some(rows.to_owned()),
            columns: columns
                .iter()
                .map(|&(name, path)| MappingColumn::new(name, path))
                .collect(),
        }
    }

    #[test]
    fn adt_patient_fields() {
        let adt = read(ADT);
        let m = mapping(
            "PID",
            &[
                ("family", "PID-5.1"),
                ("given", "PID-5.2"),
                ("birth", "PID-7"),
                ("sex", "PID-8"),
                ("external-id", "PID-2"),
                ("id", "PID-3"),
                ("zip", "PID-11.5"),
                ("class", "PV1-2"),
                ("location", "PV1-3"),
                ("event", "MSH-9.2"),
                ("control", "MSH-10"),
                ("separator", "MSH-1"),
                ("encoding", "MSH-2"),
                ("next-of-kin", "NK1-2.1"),
            ],
        );
        let table = hl7_table(&[&adt], &m).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.row(0),
            [
                "DOE", "JOHN", "19480203", "M", "0493575", "454721", "44123", "O", "168", "A04",
                "1817457", "|", "^~\\&", "ROE"
            ]
        );
    }

    #[test]
    fn obx_rows_take_the_patient_from_the_same_message() {
        let oru = read(ORU);
        assert!(
            oru.contains('\r') && !oru.contains('\n'),
            "oru.hl7 ends segments with CR"
        );
        let m = mapping(
            "OBX",
            &[
                ("code", "OBX-3.1"),
                ("value", "OBX-5"),
                ("unit", "OBX-6.2"),
                ("flag", "OBX-8"),
                ("patient", "PID-3.1"),
                ("family", "PID-5.1"),
                ("birth", "PID-7"),
            ],
        );
        let table = hl7_table(&[&oru], &m).unwrap();
        assert_eq!(table.len(), 5);
        let column = |name: &str| -> Vec<String> {
            let column = table.column(name).unwrap();
            (0..table.len())
                .map(|r| column.value(r).to_owned())
                .collect()
        };
        assert_eq!(column("code"), ["JHDL", "JTRIG", "JVLDL", "JLDL", "JCHO"]);
        assert_eq!(column("value"), ["62", "72", "14", "134", "210"]);
        assert_eq!(column("unit"), ["mg/dL"; 5]);
        // `""` is HL7's explicit null: a missing value.
        assert_eq!(column("flag"), ["", "", "", "H", "H"]);
        assert_eq!(column("patient"), ["94000000000"; 5]);
        assert_eq!(column("family"), ["LASTNAME"; 5]);
        assert_eq!(column("birth"), ["19460101"; 5]);
    }

    #[test]
    fn obx_rows_read_their_own_obr_and_repetitions() {
        let imm = read(ORU_IMM);
        let m = mapping(
            "OBX",
            &[
                ("order", "OBR-1"),
                ("set", "OBX-1"),
                ("code", "OBX-3.1"),
                ("part", "OBX-3.1.2"),
                ("value", "OBX-5"),
                ("text", "OBX-5.2"),
                ("family", "PID-5.1"),
            ],
        );
        let table = hl7_table(&[&imm], &m).unwrap();
        assert_eq!(table.len(), 47);
        assert_eq!(table.row(0), ["1", "1", "21612-7", "", "05", "", "Doe"]);
        // The OBX under the second OBR reads that OBR, not the message's first.
        assert_eq!(
            table.row(11),
            ["2", "2", "30955-9", "30957-5", "MSD", "Merck", "Doe"]
        );
        assert_eq!(
            table.row(22),
            ["3", "1", "30961-7", "30956-7", "10", "IPV", "Doe"]
        );
        // `Intramuscular ` is trimmed.
        assert_eq!(table.column("text").unwrap().value(13), "Intramuscular");
        assert_eq!(
            table.row(46),
            ["8", "4", "30978-1", "", "IN", "Initial", "Doe"]
        );

        let m = mapping(
            "message",
            &[
                ("first-id", "PID-3"),
                ("second-id", "PID-3[2]"),
                ("third-type", "PID-3[3].5"),
                ("fourth", "PID-3[4]"),
                ("middle", "PID-5.3"),
                ("street2", "PID-11.2"),
                ("phone", "PID-13"),
                ("control", "MSH-10"),
            ],
        );
        let table = hl7_table(&[&imm], &m).unwrap();
        assert_eq!(
            table.row(0),
            [
                "1234",
                "1234-12",
                "MR",
                "",
                "Fitzgerald",
                "APT 3B",
                "(678) 555-1212",
                "20010422GA03"
            ]
        );
    }

    #[test]
    fn several_messages_in_one_text_and_in_several() {
        let (adt, orm, oru, imm) = (read(ADT), read(ORM), read(ORU), read(ORU_IMM));
        let joined = format!("{adt}\r\n{orm}\n\n{oru}\r{imm}");
        let m = mapping(
            "message",
            &[
                ("type", "MSH-9.1"),
                ("control", "MSH-10"),
                ("family", "PID-5.1"),
                ("birth", "PID-7"),
            ],
        );
        let table = hl7_table(&[&joined], &m).unwrap();
        assert_eq!(table.len(), 4);
        assert_eq!(table.row(0), ["ADT", "1817457", "DOE", "19480203"]);
        assert_eq!(
            table.row(1),
            ["ORM", "MSGID20060307110114", "Jones", "19670824"]
        );
        assert_eq!(
            table.row(2),
            ["ORU", "Q335939501T337311002", "LASTNAME", "19460101"]
        );
        assert_eq!(table.row(3), ["ORU", "20010422GA03", "Doe", "20001007"]);

        let inputs = [adt.as_str(), orm.as_str(), oru.as_str(), imm.as_str()];
        let obx = hl7_table(&inputs, &mapping("OBX", &[("family", "PID-5.1")])).unwrap();
        assert_eq!(obx.len(), 5 + 47);
        assert_eq!(
            obx.column("family").unwrap().dictionary(),
            ["LASTNAME", "Doe"]
        );
        let pid = hl7_table(&inputs, &mapping("pid", &[("id", "PID-3")])).unwrap();
        assert_eq!(pid.len(), 4);
        assert_eq!(
            pid.column("id").unwrap().dictionary(),
            ["454721", "12001", "94000000000", "1234"]
        );
    }

    #[test]
    fn escape_sequences_are_decoded_after_splitting() {
        let message = "MSH|^~\\&|APP|FAC|||20240101||ADT^A01|42|P|2.5\r\
                       PID|1||7^^^H||O\\T\\Brien\\S\\Jr^Mary\\F\\Ann||19800101|F\r\
                       OBX|1|TX|NOTE^Note||a\\R\\b\\E\\c\\.br\\d\\H\\e\\N\\ \\X41C3A9\\ \\Q\\ \\X4\\|";
        let m = mapping(
            "OBX",
            &[
                ("family", "PID-5.1"),
                ("given", "PID-5.2"),
                ("note", "OBX-5"),
            ],
        );
        let table = hl7_table(&[message], &m).unwrap();
        assert_eq!(
            table.row(0),
            ["O&Brien^Jr", "Mary|Ann", "a~b\\c\nde Aé \\Q\\ \\X4\\"]
        );
    }

    #[test]
    fn each_message_uses_its_own_delimiters() {
        let text = "MSH#*!$%#A#B#C#D#20240101##ADT*A01#7#P#2.5\n\
                    PID#1##99*X!100*Y##Smith*Ann$F$x\n\
                    MSH|^~\\&|A|B|C|D|20240102||ADT^A08|8|P|2.5\n\
                    PID|1||5^Z||Jones^Bo\n";
        let m = mapping(
            "PID",
            &[
                ("id", "PID-3"),
                ("second-id", "PID-3[2]"),
                ("second-kind", "PID-3[2].2"),
                ("family", "PID-5.1"),
                ("given", "PID-5.2"),
                ("separator", "MSH-1"),
                ("encoding", "MSH-2"),
                ("event", "MSH-9.2"),
                ("control", "MSH-10"),
            ],
        );
        let table = hl7_table(&[text], &m).unwrap();
        assert_eq!(
            table.row(0),
            ["99", "100", "Y", "Smith", "Ann#x", "#", "*!$%", "A01", "7"]
        );
        assert_eq!(
            table.row(1),
            ["5", "", "", "Jones", "Bo", "|", "^~\\&", "A08", "8"]
        );
    }

    #[test]
    fn a_required_value_that_is_missing_names_the_message() {
        let adt = read(ADT);
        let mut m = mapping("PID", &[("family", "PID-5.1")]);
        m.columns
            .push(MappingColumn::new("diagnosis", "DG1-3.1").required());
        let err = hl7_table(&[&adt], &m).unwrap_err();
        match &err {
            AnonError::MissingRequired {
                column,
                path,
                record,
            } => {
                assert_eq!(column, "diagnosis");
                assert_eq!(path, "DG1-3.1");
                assert_eq!(
                    record,
                    "message 1 (MSH-10 `1817457`), PID number 1, which has no DG1 segment"
                );
            }
            other => panic!("unexpected {other}"),
        }
        let oru = read(ORU);
        let mut m = mapping("OBX", &[("flag", "OBX-8")]);
        m.columns[0].required = true;
        let err = hl7_table(&[&oru], &m).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("message 1 (MSH-10 `Q335939501T337311002`), OBX number 1"),
            "{err}"
        );
    }

    #[test]
    fn malformed_texts_paths_and_rows_are_errors() {
        let m = mapping("PID", &[("family", "PID-5.1")]);
        let err = hl7_table(&["MSH|^~\\&|A\rPID|1", "\nPID|1||42\rMSH|^~\\&|A"], &m).unwrap_err();
        match &err {
            AnonError::Hl7 {
                input,
                segment,
                problem,
            } => {
                assert_eq!((*input, *segment), (2, 1));
                assert!(problem.contains("`PID` comes before any MSH"), "{problem}");
            }
            other => panic!("unexpected {other}"),
        }
        let err = hl7_table(&["MSH"], &m).unwrap_err();
        assert!(
            matches!(
                err,
                AnonError::Hl7 {
                    input: 1,
                    segment: 1,
                    ..
                }
            ),
            "{err}"
        );

        for rows in ["segment", "PIDS", "1AB", ""] {
            let err = hl7_table(&[], &mapping(rows, &[("a", "PID-5")])).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, AnonError::Mapping(_)), "{message}");
            assert!(
                message.contains("`message`") && message.contains("PID"),
                "{message}"
            );
        }
        let err = hl7_table(&[], &mapping("Message", &[("a", "PID-0")])).unwrap_err();
        match &err {
            AnonError::MappingPath {
                column,
                path,
                problem,
            } => {
                assert_eq!((column.as_str(), path.as_str()), ("a", "PID-0"));
                assert!(problem.contains("from 1"), "{problem}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("pid-3[2].4.1").unwrap(),
            Hl7Path {
                segment: "PID".into(),
                field: 3,
                repetition: 2,
                component: Some(4),
                subcomponent: Some(1),
            }
        );
        assert_eq!(
            parse_path(" OBX-5 ").unwrap(),
            Hl7Path {
                segment: "OBX".into(),
                field: 5,
                repetition: 1,
                component: None,
                subcomponent: None,
            }
        );
        for bad in [
            "PID",
            "PID5",
            "PID-",
            "PID-x",
            "PID-0",
            "PID-5.",
            "PID-5.0",
            "PID-5.1.",
            "PID-3[0]",
            "PID-3[2",
            "PID-3[]",
            "PIDX-1",
            "P-1",
            "1ID-1",
            "PID-5.1.2.3",
            "PID-5x",
        ] {
            assert!(parse_path(bad).is_err(), "`{bad}` should not parse");
        }
    }
}
