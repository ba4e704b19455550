//! Logical buffers made of physical ones, so that a buffer larger than one binding
//! (`maxStorageBufferBindingSize`: 128 MiB in WebGPU unless the adapter offers more) still
//! works: GPT-2 small's parameters, gradients and moments are 496 MB each, and its
//! token embedding alone 155 MB.
//!
//! A buffer of parts ([`crate::backend::Backend::alloc_parts`]: the model's tensors) is
//! cut into *pieces* of at most a page each: small parts share a piece, each whole, and a
//! part larger than a page is cut between its rows. A kernel binds a whole piece, so an
//! op whose views each lie within one piece runs as one dispatch; an elementwise op over a
//! view that spans pieces runs once per span, and the ops that read or write a part
//! larger than a page (the tied embedding) run once per block of its rows.

use crate::backend::Part;

/// One physical buffer of a logical one: elements `start..start + len` of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// First element, in the logical buffer.
    pub start: usize,
    /// Elements.
    pub len: usize,
    /// The physical buffer's index in the backend's table.
    pub phys: u32,
}

/// Where part of a view lies: `len` elements from `local` in physical buffer `phys`,
/// starting `at` elements into the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Elements into the view.
    pub at: usize,
    /// Elements.
    pub len: usize,
    /// The physical buffer.
    pub phys: u32,
    /// Elements into the physical buffer.
    pub local: usize,
}

/// A logical buffer: its pieces, in order, covering `0..len`.
#[derive(Clone, Debug, Default)]
pub struct Logical {
    pub pieces: Vec<Piece>,
}

impl Logical {
    /// The pieces under elements `offset..offset + len`, in order.
    pub fn spans(&self, offset: usize, len: usize) -> Vec<Span> {
        let end = offset + len;
        self.pieces
            .iter()
            .filter(|p| p.start < end && offset < p.start + p.len)
            .map(|p| {
                let from = offset.max(p.start);
                let to = end.min(p.start + p.len);
                Span { at: from - offset, len: to - from, phys: p.phys, local: from - p.start }
            })
            .collect()
    }

    /// `(physical buffer, offset in it)` of elements `offset..offset + len` when they lie
    /// within one piece.
    pub fn place(&self, offset: usize, len: usize) -> Option<(u32, usize)> {
        let p = self.pieces.iter().find(|p| p.start <= offset && offset + len <= p.start + p.len)?;
        Some((p.phys, offset - p.start))
    }

    /// Where elements `offset..offset + len` pass from one piece to the next, counted from
    /// `offset` (strictly inside the range).
    pub fn cuts(&self, offset: usize, len: usize) -> impl Iterator<Item = usize> + '_ {
        self.pieces.iter().map(|p| p.start).filter(move |&s| s > offset && s < offset + len).map(move |s| s - offset)
    }
}

/// The lengths of the pieces that hold `parts` in pages of at most `page` elements: parts
/// fill a piece in order while they fit; a part larger than a page starts a piece of its
/// own and is cut into pieces of whole rows (as many as fit a page, one at least).
pub fn plan(parts: &[Part], page: usize) -> Vec<usize> {
    let (mut pieces, mut open) = (Vec::new(), 0usize);
    for part in parts {
        if part.len <= page {
            if open + part.len > page {
                pieces.push(std::mem::take(&mut open));
            }
            open += part.len;
            continue;
        }
        if open > 0 {
            pieces.push(std::mem::take(&mut open));
        }
        let rows_per_piece = (page / part.row.max(1)).max(1);
        let mut left = part.len;
        while left > 0 {
            let take = left.min(rows_per_piece * part.row.max(1));
            pieces.push(take);
            left -= take;
        }
    }
    if open > 0 || pieces.is_empty() {
        pieces.push(open);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(len: usize, row: usize) -> Part {
        Part { len, row }
    }

    #[test]
    fn parts_fill_pages_whole_and_a_large_one_is_cut_between_rows() {
        // A 10-row table of 7 wide (70) on pages of 30: 4 rows (28) a piece.
        let parts = [part(5, 5), part(20, 4), part(70, 7), part(10, 10), part(25, 5)];
        assert_eq!(plan(&parts, 30), vec![25, 28, 28, 14, 10, 25]);
        assert_eq!(plan(&[part(8, 8)], 30), vec![8]);
        assert_eq!(plan(&[], 30), vec![0]);
        assert_eq!(plan(&[part(9, 9)], 4), vec![9], "a row larger than a page is a piece of its own");
    }

    #[test]
    fn a_view_splits_where_its_pieces_do() {
        let pieces = [(0, 25), (25, 28), (53, 28)]
            .iter()
            .enumerate()
            .map(|(i, &(start, len))| Piece { start, len, phys: i as u32 })
            .collect();
        let logical = Logical { pieces };
        assert_eq!(logical.place(30, 10), Some((1, 5)));
        assert_eq!(logical.place(20, 10), None);
        assert_eq!(logical.cuts(20, 40).collect::<Vec<_>>(), vec![5, 33]);
        let spans = logical.spans(20, 40);
        assert_eq!(
            spans.iter().map(|s| (s.at, s.len, s.phys, s.local)).collect::<Vec<_>>(),
            vec![(0, 5, 0, 20), (5, 28, 1, 0), (33, 7, 2, 0)]
        );
    }
}
