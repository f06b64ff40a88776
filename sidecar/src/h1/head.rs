//! What request and response headers share: the header's bytes, kept as they came, and an
//! index of its fields into them. A field is found by scanning the index (a header has a dozen
//! fields or so, and lengths are compared before bytes), never through a field map.

use bytes::Bytes;

/// Where some bytes are in a header's bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) start: u32,
    pub(super) end: u32,
}

impl Span {
    /// The span of `part`, a slice of the bytes that start at `base`.
    pub(super) fn of(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    pub(super) fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A header field in a header's bytes.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: Span,
    value: Span,
}

/// A header's bytes and its field index.
#[derive(Debug, Clone)]
pub struct Head {
    bytes: Bytes,
    fields: Vec<Field>,
}

impl Head {
    /// The header `buf[..len]` whose fields httparse found (`parsed`, slices of `buf`): its
    /// bytes copied once, and each field indexed and shown to `note` on the way.
    pub(super) fn new(
        buf: &[u8],
        len: usize,
        parsed: &[httparse::Header<'_>],
        mut note: impl FnMut(&[u8], &[u8]),
    ) -> Head {
        let mut fields = Vec::with_capacity(parsed.len());
        for f in parsed {
            let name = f.name.as_bytes();
            note(name, f.value);
            fields.push(Field {
                name: Span::of(buf, name),
                value: Span::of(buf, f.value),
            });
        }
        Head {
            bytes: Bytes::copy_from_slice(&buf[..len]),
            fields,
        }
    }

    /// The header's bytes as they came.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub(super) fn bytes(&self, s: Span) -> &[u8] {
        &self.bytes[s.range()]
    }

    /// The fields in the order they came: name and value.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields
            .iter()
            .map(|f| (self.bytes(f.name), self.bytes(f.value)))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The name of field `i`.
    pub(super) fn name(&self, i: usize) -> &[u8] {
        self.bytes(self.fields[i].name)
    }

    /// The first value of the field `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        self.fields()
            .find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every value of the field `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.as_bytes();
        self.fields()
            .filter(move |(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}
