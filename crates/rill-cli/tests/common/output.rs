//! Reading what the `rill` CLI prints: its tables and `name: value` lines.

use std::collections::BTreeMap;

/// The rows of the table whose header line starts with `first_column`, as
/// column name → cell; the table ends at a blank line.
pub fn table(output: &str, first_column: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = output
        .lines()
        .skip_while(|line| line.split_whitespace().next() != Some(first_column));
    let header: Vec<String> = lines
        .next()
        .unwrap_or_else(|| panic!("no {first_column} table in:\n{output}"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    lines
        .take_while(|line| !line.trim().is_empty())
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells.len(), header.len(), "row {line:?} of:\n{output}");
            header
                .iter()
                .cloned()
                .zip(cells.iter().map(|cell| (*cell).to_string()))
                .collect()
        })
        .collect()
}

/// The value of a `name: value` line.
pub fn field<'a>(output: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    output
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no '{name}:' line in:\n{output}"))
}
