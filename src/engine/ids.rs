//! Typed handles for the engine's tables, so that a server, a polled service and
//! a guard cannot be mistaken for one another.

use std::marker::PhantomData;

pub trait Id: Copy {
    fn from_index(index: usize) -> Self;
    fn index(self) -> usize;
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(usize);

        impl Id for $name {
            fn from_index(index: usize) -> Self {
                Self(index)
            }
            fn index(self) -> usize {
                self.0
            }
        }
    };
}

id!(
    /// A Nacos server (cluster, API, account).
    ServerId
);
id!(
    /// One service on one server, polled on its own: a poll target.
    TargetId
);
id!(
    /// A guarded scope: the global configuration or one rule.
    GuardId
);

/// The slot of `index` in `items`, which grows with empty slots to hold it: the
/// per-id side tables of the engine's components.
pub fn slot_at<T: Default>(items: &mut Vec<T>, index: usize) -> Option<&mut T> {
    if items.len() <= index {
        items.resize_with(index + 1, T::default);
    }
    items.get_mut(index)
}

/// Items addressed by their typed id.
#[derive(Debug)]
pub struct Table<I, T> {
    items: Vec<T>,
    id: PhantomData<I>,
}

impl<I, T> Default for Table<I, T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            id: PhantomData,
        }
    }
}

impl<I: Id, T> Table<I, T> {
    pub fn push(&mut self, item: T) -> I {
        self.items.push(item);
        I::from_index(self.items.len() - 1)
    }

    pub fn get(&self, id: I) -> Option<&T> {
        self.items.get(id.index())
    }

    pub fn get_mut(&mut self, id: I) -> Option<&mut T> {
        self.items.get_mut(id.index())
    }

    /// The id of the first item `matches` accepts.
    pub fn find(&self, matches: impl Fn(&T) -> bool) -> Option<I> {
        self.items.iter().position(matches).map(I::from_index)
    }

    pub fn iter(&self) -> impl Iterator<Item = (I, &T)> {
        self.items
            .iter()
            .enumerate()
            .map(|(index, item)| (I::from_index(index), item))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (I, &mut T)> {
        self.items
            .iter_mut()
            .enumerate()
            .map(|(index, item)| (I::from_index(index), item))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> + Clone {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
