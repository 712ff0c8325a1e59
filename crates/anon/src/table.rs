//! A table of strings, stored column by column as dictionary codes.
//!
//! The anonymization engine never compares strings: each column keeps its distinct
//! values once, in the order they first appear, and one `u32` code per row. Ten million
//! rows of ten columns take 400 MB of codes, not ten times that in `String`s. The
//! first-appearance order matters: ARX sums the entropy metric over values in that
//! order, and so does [`crate::metric`], so the totals are bit-identical.

use std::io::Read;

use rustc_hash::FxHashMap;

use crate::error::AnonError;

/// One column: its distinct values (first appearance first) and a code per row.
#[derive(Debug, Clone, Default)]
pub struct Column {
    dictionary: Vec<String>,
    index: FxHashMap<String, u32>,
    codes: Vec<u32>,
}

impl Column {
    /// Appends a row's value.
    pub fn push(&mut self, value: &str) {
        let code = match self.index.get(value) {
            Some(code) => *code,
            None => {
                let code = self.dictionary.len() as u32;
                self.dictionary.push(value.to_owned());
                self.index.insert(value.to_owned(), code);
                code
            }
        };
        self.codes.push(code);
    }

    /// Builds a column from values.
    pub fn from_values<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut column = Self::default();
        for value in values {
            column.push(value);
        }
        column
    }

    /// The distinct values, in the order they first appear.
    pub fn dictionary(&self) -> &[String] {
        &self.dictionary
    }

    /// The code of every row (an index into [`Column::dictionary`]).
    pub fn codes(&self) -> &[u32] {
        &self.codes
    }

    /// The value of row `row`.
    pub fn value(&self, row: usize) -> &str {
        &self.dictionary[self.codes[row] as usize]
    }

    /// The code of `value`, if it occurs.
    pub fn code_of(&self, value: &str) -> Option<u32> {
        self.index.get(value).copied()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Rows per code.
    pub fn frequencies(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.dictionary.len()];
        for &code in &self.codes {
            counts[code as usize] += 1;
        }
        counts
    }
}

/// Named columns of equal length.
#[derive(Debug, Clone, Default)]
pub struct Table {
    names: Vec<String>,
    columns: Vec<Column>,
}

impl Table {
    /// An empty table with these column names.
    pub fn with_columns<S: AsRef<str>>(names: &[S]) -> Result<Self, AnonError> {
        let mut table = Self::default();
        for name in names {
            let name = name.as_ref();
            if name.is_empty() {
                return Err(AnonError::EmptyColumnName);
            }
            if table.names.iter().any(|n| n == name) {
                return Err(AnonError::DuplicateColumn(name.to_owned()));
            }
            table.names.push(name.to_owned());
            table.columns.push(Column::default());
        }
        Ok(table)
    }

    /// Appends a row; it must have one value per column.
    pub fn push_row<S: AsRef<str>>(&mut self, row: &[S]) -> Result<(), AnonError> {
        if row.len() != self.columns.len() {
            return Err(AnonError::RowWidth {
                row: self.len() + 1,
                expected: self.columns.len(),
                found: row.len(),
            });
        }
        for (column, value) in self.columns.iter_mut().zip(row) {
            column.push(value.as_ref());
        }
        Ok(())
    }

    /// Reads a CSV file with a header line. `delimiter` is usually `b','` or `b';'`.
    /// Values are trimmed of surrounding spaces (the UCI Adult file has `, ` separators).
    pub fn from_csv(reader: impl Read, delimiter: u8) -> Result<Self, AnonError> {
        Self::from_csv_with_names(reader, delimiter, None)
    }

    /// Reads a CSV file; with `names`, the file has no header line and these are the
    /// columns.
    pub fn from_csv_with_names(
        reader: impl Read,
        delimiter: u8,
        names: Option<&[String]>,
    ) -> Result<Self, AnonError> {
        let mut csv = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(names.is_none())
            .trim(csv::Trim::All)
            .flexible(true)
            .from_reader(reader);
        let header: Vec<String> = match names {
            Some(names) => names.to_vec(),
            None => csv
                .headers()
                .map_err(|source| AnonError::Csv { line: 1, source })?
                .iter()
                .map(str::to_owned)
                .collect(),
        };
        let mut table = Self::with_columns(&header)?;
        let mut record = csv::StringRecord::new();
        loop {
            let line = csv.position().line();
            match csv.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(source) => return Err(AnonError::Csv { line, source }),
            }
            if record.len() == 1 && record.get(0) == Some("") {
                continue; // a blank line
            }
            if record.len() != header.len() {
                return Err(AnonError::RowWidth {
                    row: table.len() + 1,
                    expected: header.len(),
                    found: record.len(),
                });
            }
            for (column, value) in table.columns.iter_mut().zip(record.iter()) {
                column.push(value);
            }
        }
        Ok(table)
    }

    /// Writes the table as CSV with a header line.
    pub fn write_csv(&self, writer: impl std::io::Write, delimiter: u8) -> Result<(), AnonError> {
        let mut csv = csv::WriterBuilder::new()
            .delimiter(delimiter)
            .from_writer(writer);
        let io = |source: csv::Error| AnonError::Csv { line: 0, source };
        csv.write_record(&self.names).map_err(io)?;
        for row in 0..self.len() {
            csv.write_record(self.columns.iter().map(|c| c.value(row)))
                .map_err(io)?;
        }
        csv.flush().map_err(|source| AnonError::Csv {
            line: 0,
            source: source.into(),
        })
    }

    /// Column names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Position of a column, or an error naming it and the columns there are.
    pub fn position(&self, name: &str) -> Result<usize, AnonError> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| AnonError::UnknownColumn {
                column: name.to_owned(),
                known: self.names.join(", "),
            })
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Result<&Column, AnonError> {
        Ok(&self.columns[self.position(name)?])
    }

    /// The column at `index`.
    pub fn column_at(&self, index: usize) -> &Column {
        &self.columns[index]
    }

    /// All columns, in order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.columns.first().map_or(0, Column::len)
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One row's values.
    pub fn row(&self, row: usize) -> Vec<&str> {
        self.columns.iter().map(|c| c.value(row)).collect()
    }

    /// Keeps the rows whose `keep` entry is true.
    pub fn retain_rows(&mut self, keep: &[bool]) {
        for column in &mut self.columns {
            let mut kept = Column::default();
            for (row, &code) in column.codes.iter().enumerate() {
                if keep[row] {
                    kept.push(&column.dictionary[code as usize]);
                }
            }
            *column = kept;
        }
    }

    /// Reorders the rows: row `i` of the result is row `order[i]`.
    pub fn permute_rows(&mut self, order: &[usize]) {
        for column in &mut self.columns {
            let codes = order.iter().map(|&row| column.codes[row]).collect();
            column.codes = codes;
        }
    }

    /// Removes a column.
    pub fn drop_column(&mut self, index: usize) {
        self.names.remove(index);
        self.columns.remove(index);
    }

    /// Appends a column; it must have as many rows as the table (unless the table has
    /// no columns yet).
    pub fn add_column(&mut self, name: &str, column: Column) -> Result<(), AnonError> {
        if self.names.iter().any(|n| n == name) {
            return Err(AnonError::DuplicateColumn(name.to_owned()));
        }
        if !self.columns.is_empty() && column.len() != self.len() {
            return Err(AnonError::RowWidth {
                row: 0,
                expected: self.len(),
                found: column.len(),
            });
        }
        self.names.push(name.to_owned());
        self.columns.push(column);
        Ok(())
    }
}
