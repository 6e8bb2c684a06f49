//! sea-orm entities of the conversation tables.

/// `conversation_threads`: a thread's seq counter, state version and turn lease.
pub mod head {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "conversation_threads")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub thread_id: Uuid,
        pub last_seq: i64,
        pub state_version: i64,
        pub running_turn: Option<Uuid>,
        pub lease_until: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `messages`.
pub mod message {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "messages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub thread_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub role: String,
        pub author: String,
        #[sea_orm(column_type = "Text")]
        pub content: String,
        pub turn_id: Option<Uuid>,
        pub request_id: Option<String>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `checkpoints`.
pub mod checkpoint {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "checkpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub thread_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub version: i64,
        pub parent_version: Option<i64>,
        pub covers_seq: i64,
        #[sea_orm(column_type = "Blob")]
        pub state: Vec<u8>,
        pub pinned: bool,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `turns`.
pub mod turn {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "turns")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub thread_id: Uuid,
        pub request_id: Option<String>,
        pub first_seq: i64,
        pub last_seq: i64,
        pub state_version: i64,
        #[sea_orm(column_type = "JsonBinary")]
        pub outcome: Json,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `conversation_turn_queue`: turns waiting for their thread.
pub mod queued {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "conversation_turn_queue")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub thread_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub turn_id: Uuid,
        pub position: i64,
        pub expires_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `memories`: facts remembered for a user in a boardroom.
pub mod memory {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "memories")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub owner_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub boardroom_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        #[sea_orm(column_type = "Text")]
        pub fact: String,
        #[sea_orm(column_type = "Blob")]
        pub embedding: Vec<u8>,
        pub thread_id: Uuid,
        pub turn_id: Uuid,
        pub uses: i64,
        pub used_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `memory_heads`: the generation of a user's memory in a boardroom.
pub mod memory_head {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "memory_heads")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub owner_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub boardroom_id: Uuid,
        pub generation: i64,
        pub forgotten_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
