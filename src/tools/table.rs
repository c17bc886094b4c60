//! Plain-text tables for the operator commands: a header, rows, columns padded to their
//! widest cell, numbers aligned right.

use std::fmt;

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table to print: columns named and aligned, then rows of cells.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra ones are dropped.
    pub fn push(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let widest = self.rows.iter().map(|r| r[i].chars().count()).max();
                widest.unwrap_or(0).max(name.chars().count())
            })
            .collect()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths = self.widths();
        let header: Vec<String> = self.columns.iter().map(|(n, _)| n.to_string()).collect();
        for (n, row) in std::iter::once(&header).chain(&self.rows).enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                let last = i + 1 == row.len();
                if i > 0 {
                    line.push_str("  ");
                }
                match self.columns[i].1 {
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                    Align::Left if last => line.push_str(cell),
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            write!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_numbers_align_right() {
        let mut table = Table::new(&[("topic", Align::Left), ("lag", Align::Right)]);
        table.push(vec!["orders".into(), "7".into()]);
        table.push(vec!["config-changes".into(), "1200".into()]);
        assert_eq!(
            table.to_string(),
            "topic            lag\n\
             orders             7\n\
             config-changes  1200"
        );
    }
}
