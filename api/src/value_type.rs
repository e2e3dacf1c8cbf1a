//! [`value_type!`]: the items of poem-openapi's `Type` that every value type of this API read from
//! a parameter or a field spells the same way, written once.

/// The items of `poem_openapi::types::Type` for a value that is its own raw value (validators and
/// examples see it whole), named `name` in parse errors and documented inline as `schema` (a
/// `MetaSchema`); `required: false` for a parameter with a default. Used inside the `impl`, so
/// the impl's generics stay the type's own.
macro_rules! value_type {
    (required: $required:expr, name: $name:expr, schema: $schema:expr $(,)?) => {
        const IS_REQUIRED: bool = $required;

        type RawValueType = Self;

        type RawElementValueType = Self;

        fn name() -> ::std::borrow::Cow<'static, str> {
            ($name).into()
        }

        fn schema_ref() -> ::poem_openapi::registry::MetaSchemaRef {
            ::poem_openapi::registry::MetaSchemaRef::Inline(Box::new($schema))
        }

        fn as_raw_value(&self) -> Option<&Self> {
            Some(self)
        }

        fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
            Box::new(self.as_raw_value().into_iter())
        }
    };
}

pub(crate) use value_type;
