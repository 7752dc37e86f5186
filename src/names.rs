//! `named!`: the text names of a closed set of values (trigger kinds, states, reasons), as
//! they are stored, shown and parsed, written once for every such enum.

/// Gives `$ty` its names: `ALL`, `as_str`, `parse`, `names` (for messages that list them),
/// `Display` (which honours width, for tables) and `Serialize` as the name.
macro_rules! named {
    ($ty:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &[$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<$ty> {
                match text { $($text => Some($ty::$variant),)+ _ => None }
            }

            pub fn names() -> String {
                [$($text),+].join(", ")
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}
