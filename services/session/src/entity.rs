//! sea-orm entities of the three tables.

/// `boardrooms`.
pub mod boardroom {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "boardrooms")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub owner_id: String,
        pub name: String,
        #[sea_orm(column_type = "JsonBinary")]
        pub advisors: Json,
        pub double_text: Option<String>,
        pub deliberation: Option<String>,
        pub debate_rounds: Option<i16>,
        pub version: i64,
        pub request_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `sessions`.
pub mod session {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "sessions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub boardroom_id: Uuid,
        pub user_id: String,
        pub title: String,
        pub is_active: bool,
        pub request_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub ended_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// The columns a Session is made of: exactly the covering indexes' columns, so lists are
    /// answered by index-only scans.
    #[derive(Clone, Debug, sea_orm::FromQueryResult)]
    pub struct Row {
        pub id: Uuid,
        pub boardroom_id: Uuid,
        pub user_id: String,
        pub title: String,
        pub is_active: bool,
        pub created_at: DateTimeUtc,
        pub ended_at: Option<DateTimeUtc>,
    }

    /// The columns selected into [`Row`].
    pub const ROW_COLUMNS: [Column; 7] = [
        Column::Id,
        Column::BoardroomId,
        Column::UserId,
        Column::Title,
        Column::IsActive,
        Column::CreatedAt,
        Column::EndedAt,
    ];
}

/// `threads`.
pub mod thread {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "threads")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub session_id: Uuid,
        pub thread_type: String,
        pub status: String,
        pub title: String,
        pub request_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// The columns a Thread is made of (see [`super::session::Row`]).
    #[derive(Clone, Debug, sea_orm::FromQueryResult)]
    pub struct Row {
        pub id: Uuid,
        pub session_id: Uuid,
        pub thread_type: String,
        pub status: String,
        pub title: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    /// The columns selected into [`Row`].
    pub const ROW_COLUMNS: [Column; 7] = [
        Column::Id,
        Column::SessionId,
        Column::ThreadType,
        Column::Status,
        Column::Title,
        Column::CreatedAt,
        Column::UpdatedAt,
    ];
}
