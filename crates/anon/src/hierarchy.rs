//! Generalization hierarchies: for each original value, its label at every level.
//!
//! The file format is ARX's: one line per original value, `value;level1;level2;…`, the
//! last level usually `*`. ARX users bring theirs unchanged. Builders make the common
//! ones: numeric bands ([`Hierarchy::intervals`]), dates ([`Hierarchy::dates`]), ZIP
//! codes ([`Hierarchy::zip_codes`]) and the two-level "keep or hide" ([`Hierarchy::flat`]).
//!
//! A hierarchy must be a tree: two values with the same label at one level have the same
//! label at every higher level. Without that, generalizing one more level could split a
//! group, and neither the search's pruning nor hierarchical t-closeness would hold.

use rustc_hash::FxHashMap;

use crate::{error::AnonError, table::Column};

/// The label every value reaches at the top of the builders' hierarchies.
pub const TOP: &str = "*";

/// A generalization hierarchy of one column.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    column: String,
    /// One row per original value: the value, then its label at levels 1, 2, ….
    rows: Vec<Vec<String>>,
    index: FxHashMap<String, usize>,
}

impl Hierarchy {
    /// Parses ARX's CSV hierarchy format (`value;level1;…`; `delimiter` is usually `;`).
    /// Blank lines are skipped; a `\r` before the line end is ignored.
    pub fn from_arx_csv(column: &str, text: &str, delimiter: char) -> Result<Self, AnonError> {
        let rows = text
            .lines()
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .filter(|line| !line.trim().is_empty())
            .map(|line| line.split(delimiter).map(|s| s.trim().to_owned()).collect())
            .collect();
        Self::from_rows(column, rows)
    }

    /// A hierarchy from its rows (value first). Checks that every row has the same
    /// number of levels, that no value appears twice and that it is a tree.
    pub fn from_rows(column: &str, rows: Vec<Vec<String>>) -> Result<Self, AnonError> {
        let problem = |line: usize, problem: String| AnonError::Hierarchy {
            column: column.to_owned(),
            line,
            problem,
        };
        let Some(first) = rows.first() else {
            return Err(problem(0, "it is empty".into()));
        };
        let height = first.len();
        let mut index = FxHashMap::default();
        for (line, row) in rows.iter().enumerate() {
            if row.len() != height {
                return Err(problem(
                    line + 1,
                    format!("{} levels, the first line has {height}", row.len()),
                ));
            }
            if index.insert(row[0].clone(), line).is_some() {
                return Err(problem(
                    line + 1,
                    format!("value `{}` appears twice", row[0]),
                ));
            }
        }
        // A tree: the label at level L decides the label at level L + 1.
        for level in 1..height.saturating_sub(1) {
            let mut parent: FxHashMap<&str, (&str, usize)> = FxHashMap::default();
            for (line, row) in rows.iter().enumerate() {
                let (label, up) = (row[level].as_str(), row[level + 1].as_str());
                match parent.get(label) {
                    Some((seen, seen_line)) if *seen != up => {
                        return Err(problem(
                            line + 1,
                            format!(
                                "`{label}` at level {level} generalizes to `{up}` here but to \
                                 `{seen}` on line {seen_line}: a hierarchy must be a tree"
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        parent.insert(label, (up, line + 1));
                    }
                }
            }
        }
        Ok(Self {
            column: column.to_owned(),
            rows,
            index,
        })
    }

    /// The two-level hierarchy: a value, or [`TOP`].
    pub fn flat<'a>(column: &str, values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut rows = Vec::new();
        let mut seen = FxHashMap::default();
        for value in values {
            if seen.insert(value.to_owned(), ()).is_none() {
                rows.push(vec![value.to_owned(), TOP.to_owned()]);
            }
        }
        Self::from_rows(column, rows).expect("a flat hierarchy is a tree")
    }

    /// Numeric bands: level `i` groups values into intervals of `widths[i - 1]`
    /// (`lo-hi`, both ends included, aligned at 0), then [`TOP`]. Each width must be a
    /// multiple of the one before, so that bands nest. Values must be integers, or one
    /// of Safe Harbor's open categories (`90+`, `<=1936`), which stay themselves up to
    /// the top.
    pub fn intervals<'a>(
        column: &str,
        values: impl IntoIterator<Item = &'a str>,
        widths: &[u64],
    ) -> Result<Self, AnonError> {
        let problem = |problem: String| AnonError::Hierarchy {
            column: column.to_owned(),
            line: 0,
            problem,
        };
        for pair in widths.windows(2) {
            if pair[0] == 0 || pair[1] % pair[0] != 0 {
                return Err(problem(format!(
                    "band width {} is not a multiple of {}: bands must nest",
                    pair[1], pair[0]
                )));
            }
        }
        if widths.first() == Some(&0) {
            return Err(problem("a band width of 0".into()));
        }
        let mut rows = Vec::new();
        let mut seen = FxHashMap::default();
        for value in values {
            if seen.insert(value.to_owned(), ()).is_some() {
                continue;
            }
            let mut row = vec![value.to_owned()];
            if is_open_category(value) {
                row.extend(widths.iter().map(|_| value.to_owned()));
                row.push(TOP.to_owned());
                rows.push(row);
                continue;
            }
            let number: i64 = value
                .parse()
                .map_err(|_| problem(format!("`{value}` is not an integer; bands need numbers")))?;
            for &width in widths {
                let band = i64::try_from(width)
                    .ok()
                    .and_then(|width| {
                        let lo = number.div_euclid(width).checked_mul(width)?;
                        Some((lo, lo.checked_add(width - 1)?))
                    })
                    .ok_or_else(|| {
                        problem(format!("`{value}` in bands of {width}: out of range"))
                    })?;
                row.push(format!("{}-{}", band.0, band.1));
            }
            row.push(TOP.to_owned());
            rows.push(row);
        }
        Self::from_rows(column, rows)
    }

    /// Dates (`YYYY-MM-DD`, optionally followed by a time): the date, `YYYY-MM`,
    /// `YYYY`, the decade (`1980-1989`), then [`TOP`]. When every value is a year (as
    /// Safe Harbor leaves dates) or an open category such as `<=1936`: the year, the
    /// decade, then [`TOP`].
    pub fn dates<'a>(
        column: &str,
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, AnonError> {
        let mut distinct: Vec<&str> = Vec::new();
        let mut seen = FxHashMap::default();
        for value in values {
            if seen.insert(value, ()).is_none() {
                distinct.push(value);
            }
        }
        let is_year = |v: &str| v.len() == 4 && v.bytes().all(|b| b.is_ascii_digit());
        if distinct.iter().all(|v| is_year(v) || is_open_category(v)) {
            let rows = distinct
                .into_iter()
                .map(|value| {
                    let decade = if is_year(value) {
                        let year: u32 = value.parse().expect("four digits");
                        format!("{}-{}", year / 10 * 10, year / 10 * 10 + 9)
                    } else {
                        value.to_owned()
                    };
                    vec![value.to_owned(), decade, TOP.to_owned()]
                })
                .collect();
            return Self::from_rows(column, rows);
        }
        let mut rows = Vec::new();
        for value in distinct {
            let bad = || AnonError::Hierarchy {
                column: column.to_owned(),
                line: 0,
                problem: format!("`{value}` is not a date (YYYY-MM-DD)"),
            };
            let date = value.get(..10).ok_or_else(bad)?;
            let bytes = date.as_bytes();
            let digits =
                |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
            if !(digits(0..4)
                && bytes[4] == b'-'
                && digits(5..7)
                && bytes[7] == b'-'
                && digits(8..10))
            {
                return Err(bad());
            }
            let year: u32 = date[..4].parse().map_err(|_| bad())?;
            let decade = year / 10 * 10;
            rows.push(vec![
                value.to_owned(),
                date[..7].to_owned(),
                date[..4].to_owned(),
                format!("{decade}-{}", decade + 9),
                TOP.to_owned(),
            ]);
        }
        Self::from_rows(column, rows)
    }

    /// ZIP codes: one more trailing digit masked per level (`02139`, `0213*`, …,
    /// `*****`). Codes of different lengths are allowed; each is masked to its length.
    pub fn zip_codes<'a>(
        column: &str,
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, AnonError> {
        let mut distinct: Vec<&str> = Vec::new();
        let mut seen = FxHashMap::default();
        let mut longest = 0;
        for value in values {
            if seen.insert(value, ()).is_none() {
                longest = longest.max(value.chars().count());
                distinct.push(value);
            }
        }
        let rows = distinct
            .into_iter()
            .map(|value| {
                let chars: Vec<char> = value.chars().collect();
                let mut row = vec![value.to_owned()];
                for masked in 1..=longest {
                    let keep = chars.len().saturating_sub(masked);
                    let label: String = chars[..keep]
                        .iter()
                        .copied()
                        .chain(std::iter::repeat_n('*', chars.len() - keep))
                        .collect();
                    row.push(label);
                }
                row
            })
            .collect();
        Self::from_rows(column, rows)
    }

    /// The column this hierarchy is for.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// Number of levels, the original values' level 0 included.
    pub fn height(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    /// The label of `value` at `level`, if the value is in the hierarchy.
    pub fn generalize(&self, value: &str, level: usize) -> Option<&str> {
        let row = &self.rows[*self.index.get(value)?];
        row.get(level).map(String::as_str)
    }

    /// The hierarchy's rows (value first).
    pub fn rows(&self) -> &[Vec<String>] {
        &self.rows
    }

    /// Maps a column's codes to codes at every level. Fails on the first value that is
    /// missing from the hierarchy, naming it.
    pub fn encode(&self, column: &Column) -> Result<EncodedHierarchy, AnonError> {
        let mut rows = Vec::with_capacity(column.dictionary().len());
        for value in column.dictionary() {
            let row = self
                .index
                .get(value)
                .ok_or_else(|| AnonError::MissingFromHierarchy {
                    column: self.column.clone(),
                    value: value.clone(),
                })?;
            rows.push(&self.rows[*row]);
        }
        let size = self.rows.len() as f64;
        let levels = (0..self.height())
            .map(|level| {
                // How many of the hierarchy's values (those absent from the data too)
                // each label covers: the share of the domain ARX's loss metric uses.
                let mut covers: FxHashMap<&str, u64> = FxHashMap::default();
                for row in &self.rows {
                    *covers.entry(row[level].as_str()).or_default() += 1;
                }
                let mut index: FxHashMap<&str, u32> = FxHashMap::default();
                let mut labels = Vec::new();
                let map = rows
                    .iter()
                    .map(|row| {
                        let label = row[level].as_str();
                        *index.entry(label).or_insert_with(|| {
                            labels.push(label.to_owned());
                            labels.len() as u32 - 1
                        })
                    })
                    .collect();
                let share = labels
                    .iter()
                    .map(|l| covers[l.as_str()] as f64 / size)
                    .collect();
                Level { map, labels, share }
            })
            .collect();
        Ok(EncodedHierarchy { levels })
    }
}

/// Safe Harbor's open-ended categories: `90+` (ages over 89), `<=1936` (birth years
/// of people over 89).
fn is_open_category(value: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    value.strip_suffix('+').is_some_and(digits) || value.strip_prefix("<=").is_some_and(digits)
}

/// A hierarchy applied to one column's dictionary.
#[derive(Debug, Clone)]
pub struct EncodedHierarchy {
    /// Level 0 (the values themselves, codes unchanged) to the top.
    pub levels: Vec<Level>,
}

/// One level of an [`EncodedHierarchy`].
#[derive(Debug, Clone)]
pub struct Level {
    /// The generalized code of each original code.
    pub map: Vec<u32>,
    /// The label of each generalized code, in order of first appearance.
    pub labels: Vec<String>,
    /// The share of the hierarchy's values each label covers (a value alone: 1 / the
    /// hierarchy's size; the top: 1).
    pub share: Vec<f64>,
}

impl EncodedHierarchy {
    /// Number of levels.
    pub fn height(&self) -> usize {
        self.levels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arx_files_parse_and_non_trees_are_refused() {
        let h = Hierarchy::from_arx_csv("c", "a;x;*\r\nb;x;*\n\nc;y;*", ';').unwrap();
        assert_eq!(h.height(), 3);
        assert_eq!(h.generalize("b", 1), Some("x"));
        assert_eq!(h.generalize("z", 1), None);
        let err = Hierarchy::from_arx_csv("c", "a;x;p\nb;x;q\n", ';').unwrap_err();
        assert!(err.to_string().contains("must be a tree"), "{err}");
        let err = Hierarchy::from_arx_csv("c", "a;x;*\nb;*\n", ';').unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = Hierarchy::from_arx_csv("c", "a;x\na;y\n", ';').unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        assert!(Hierarchy::from_arx_csv("c", "\n", ';').is_err());
    }

    #[test]
    fn builders_make_nested_levels() {
        let ages = Hierarchy::intervals("age", ["3", "17", "90+", "-4"], &[5, 10]).unwrap();
        assert_eq!(ages.rows()[0], ["3", "0-4", "0-9", "*"]);
        assert_eq!(ages.rows()[1], ["17", "15-19", "10-19", "*"]);
        assert_eq!(ages.rows()[2], ["90+", "90+", "90+", "*"]);
        assert_eq!(ages.rows()[3], ["-4", "-5--1", "-10--1", "*"]);
        assert!(Hierarchy::intervals("age", ["x"], &[5]).is_err());
        assert!(Hierarchy::intervals("age", ["1"], &[5, 7]).is_err());
        assert!(Hierarchy::intervals("age", ["1"], &[0]).is_err());

        let dates = Hierarchy::dates("d", ["2024-02-29T10:00:00Z"]).unwrap();
        assert_eq!(
            dates.rows()[0],
            ["2024-02-29T10:00:00Z", "2024-02", "2024", "2020-2029", "*"]
        );
        let years = Hierarchy::dates("d", ["1945", "<=1936"]).unwrap();
        assert_eq!(years.rows()[0], ["1945", "1940-1949", "*"]);
        assert_eq!(years.rows()[1], ["<=1936", "<=1936", "*"]);
        assert!(Hierarchy::dates("d", ["24-1-1"]).is_err());

        let zips = Hierarchy::zip_codes("z", ["02139", "021"]).unwrap();
        assert_eq!(
            zips.rows()[0],
            ["02139", "0213*", "021**", "02***", "0****", "*****"]
        );
        assert_eq!(zips.rows()[1], ["021", "02*", "0**", "***", "***", "***"]);
    }

    #[test]
    fn encoding_names_the_missing_value() {
        let h = Hierarchy::flat("sex", ["F", "M"]);
        let column = Column::from_values(["F", "X"]);
        let err = h.encode(&column).unwrap_err();
        assert_eq!(
            err.to_string(),
            "value `X` of column `sex` is not in its hierarchy"
        );
        let encoded = h.encode(&Column::from_values(["M", "F", "M"])).unwrap();
        assert_eq!(encoded.levels[1].labels, ["*"]);
        assert_eq!(encoded.levels[0].map, [0, 1]);
    }
}
